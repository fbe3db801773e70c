// Shared by the spec files: a fresh dist/, temporary socket paths, bounded waits.
import { execFileSync, spawn, type ChildProcess } from 'node:child_process'
import { existsSync, mkdtempSync, readdirSync, rmSync, statSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

import type { ExecutionContext } from 'ava'

export const root = join(__dirname, '..')
export const cli = join(root, 'dist', 'cli.js')
export const demo = join(root, 'dist', 'demo.js')

/**
 * Rebuilds the TypeScript if dist/ is missing or older than any source file,
 * so tests that spawn dist/*.js never run a stale build.
 */
export function ensureDistBuilt(): void {
  const src = join(root, 'src')
  const newest = Math.max(...readdirSync(src).map((f) => statSync(join(src, f)).mtimeMs))
  const outputs = [cli, demo]
  if (outputs.some((f) => !existsSync(f) || statSync(f).mtimeMs < newest)) {
    execFileSync(process.execPath, [require.resolve('typescript/bin/tsc'), '-p', join(root, 'tsconfig.json')], {
      stdio: 'inherit',
    })
  }
}

/** A socket path in a fresh directory that is removed when the test ends. */
export function tempSocket(t: ExecutionContext, name = 'edu.sock'): string {
  const dir = mkdtempSync(join(tmpdir(), 'emudev-test-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  return join(dir, name)
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms))
}

/** Polls `predicate` every 20 ms; true once it holds, false after `ms`. */
export async function waitFor(predicate: () => boolean, ms: number): Promise<boolean> {
  const deadline = Date.now() + ms
  for (;;) {
    if (predicate()) return true
    if (Date.now() > deadline) return false
    await sleep(20)
  }
}

/** The child's exit code (or signal name), or null if it is still running after `ms`. */
export function waitForExit(child: ChildProcess, ms: number): Promise<number | string | null> {
  if (child.exitCode !== null) return Promise.resolve(child.exitCode)
  if (child.signalCode !== null) return Promise.resolve(child.signalCode)
  return new Promise((resolve) => {
    const timer = setTimeout(() => resolve(null), ms)
    child.once('exit', (code, signal) => {
      clearTimeout(timer)
      resolve(code ?? signal)
    })
  })
}

/** Kills `child` when the test ends if it is still running. */
export function killOnTeardown(t: ExecutionContext, child: ChildProcess): void {
  t.teardown(() => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL')
  })
}

/** Collects a child's stderr as text. */
export function collectStderr(child: ChildProcess): () => string {
  let text = ''
  child.stderr?.setEncoding('utf8').on('data', (chunk: string) => {
    text += chunk
  })
  return () => text
}

/**
 * Runs the CLI (`node dist/cli.js ...args`) without blocking this process and collects its
 * output; killed after 30 s (then `code` is null).
 */
export function runCliAsync(...args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [cli, ...args], { stdio: ['ignore', 'pipe', 'pipe'] })
    let stdout = ''
    let stderr = ''
    child.stdout.setEncoding('utf8').on('data', (c: string) => (stdout += c))
    child.stderr.setEncoding('utf8').on('data', (c: string) => (stderr += c))
    const timer = setTimeout(() => child.kill('SIGKILL'), 30_000)
    child.on('close', (code) => {
      clearTimeout(timer)
      resolve({ code, stdout, stderr })
    })
  })
}
