#!/usr/bin/env node
/**
 * The `emudev` command.
 *
 * Exit codes: 0 success, 1 a command failed, 2 bad usage (unknown command or
 * option, missing or malformed value, bad `--vdev`). Errors are one line on
 * stderr naming the bad part; help goes to stdout.
 */
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { parseArgs } from 'node:util'
import { parseVdevList, VdevError, DRIVERS, allowedKeys } from './config'

/** Where the CLI writes; `main` takes it so tests can capture output. */
export interface CliIo {
  stdout: (text: string) => void
  stderr: (text: string) => void
}

const EXIT_OK = 0
const EXIT_FAILURE = 1
const EXIT_USAGE = 2

/** Raised for bad usage; `main` turns it into one line on stderr and exit code 2. */
class UsageError extends Error {}

type OptionSpec = { type: 'boolean' | 'string'; short?: string; multiple?: boolean }

const GLOBAL_OPTIONS: Record<string, OptionSpec> = {
  help: { type: 'boolean', short: 'h' },
  version: { type: 'boolean', short: 'V' },
}

const SERVE_OPTIONS: Record<string, OptionSpec> = {
  help: { type: 'boolean', short: 'h' },
  vdev: { type: 'string', multiple: true },
}

const HELP = `Usage: emudev <command> [options]

Userspace PCI device emulation over vfio-user.

Commands:
  serve     serve emulated devices on vfio-user sockets

Options:
  -h, --help       show this help (or a command's help: emudev serve --help)
  -V, --version    print the package and native addon versions
`

function serveHelp(): string {
  const drivers = DRIVERS.map((d) => `  ${d.padEnd(12)} keys: ${allowedKeys(d).join(', ')}`).join('\n')
  return `Usage: emudev serve --vdev <device> [--vdev <device> ...]

Serve each device on its own vfio-user UNIX socket.

Options:
  --vdev <device>  a device string <driver><instance>[,key=value]...,
                   e.g. 'emu_edu0,sock=/tmp/edu.sock'; repeatable
  -h, --help       show this help

Drivers:
${drivers}
`
}

/**
 * Parses `args` against `options`, reporting unknown options and missing or
 * unexpected values as {@link UsageError}s with our own one-line wording.
 */
function parseOptions(
  args: string[],
  options: Record<string, OptionSpec>,
  context: string,
): { values: Record<string, string | boolean | (string | boolean)[] | undefined>; positionals: string[] } {
  const { values, positionals, tokens } = parseArgs({ args, options, strict: false, allowPositionals: true, tokens: true })
  for (const token of tokens) {
    if (token.kind !== 'option') continue
    const spec = Object.prototype.hasOwnProperty.call(options, token.name) ? options[token.name] : undefined
    if (spec === undefined) throw new UsageError(`${context}: unknown option '${token.rawName}'`)
    if (spec.type === 'string' && token.value === undefined) {
      throw new UsageError(`${context}: option '${token.rawName}' needs a value`)
    }
    if (spec.type === 'boolean' && token.value !== undefined) {
      throw new UsageError(`${context}: option '${token.rawName}' takes no value`)
    }
  }
  return { values, positionals }
}

function packageVersion(): string {
  // `__dirname` is src/ under tsx and dist/ when built; package.json is one level up from both.
  const pkg: unknown = JSON.parse(readFileSync(join(__dirname, '..', 'package.json'), 'utf8'))
  const version = (pkg as { version?: unknown }).version
  return typeof version === 'string' ? version : 'unknown'
}

function nativeVersion(): string {
  // Loaded lazily: --help and usage errors work even without a built addon.
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const { native } = require('./native') as typeof import('./native')
  return native.nativeVersion()
}

function serve(args: string[], io: CliIo): number {
  const { values, positionals } = parseOptions(args, SERVE_OPTIONS, 'emudev serve')
  if (values.help === true) {
    io.stdout(serveHelp())
    return EXIT_OK
  }
  if (positionals.length > 0) throw new UsageError(`emudev serve: unexpected argument '${positionals[0]}'`)
  const vdevs = (values.vdev ?? []) as string[]
  if (vdevs.length === 0) throw new UsageError("emudev serve: at least one --vdev is required (e.g. --vdev 'emu_edu0,sock=/tmp/edu.sock')")
  try {
    parseVdevList(vdevs)
  } catch (err) {
    if (err instanceof VdevError) throw new UsageError(`emudev serve: --vdev '${err.vdev}': ${err.message}`)
    throw err
  }
  io.stderr('serve: not yet wired to the native server\n')
  return EXIT_FAILURE
}

/** Runs the CLI on `argv` (without the node and script paths) and returns the exit code. */
export function main(argv: string[], io: CliIo): number {
  try {
    const [first, ...rest] = argv
    if (first === undefined || first.startsWith('-')) {
      const { values, positionals } = parseOptions(argv, GLOBAL_OPTIONS, 'emudev')
      if (values.help === true) {
        io.stdout(HELP)
        return EXIT_OK
      }
      if (values.version === true) {
        io.stdout(`emudev ${packageVersion()} (native ${nativeVersion()})\n`)
        return EXIT_OK
      }
      if (positionals.length > 0) {
        throw new UsageError(`emudev: options must follow the command (got '${positionals[0]}' after them)`)
      }
      throw new UsageError("emudev: missing command (try 'emudev --help')")
    }
    switch (first) {
      case 'serve':
        return serve(rest, io)
      default:
        throw new UsageError(`emudev: unknown command '${first}' (try 'emudev --help')`)
    }
  } catch (err) {
    if (err instanceof UsageError) {
      io.stderr(`${err.message}\n`)
      return EXIT_USAGE
    }
    throw err
  }
}

if (require.main === module) {
  process.exitCode = main(process.argv.slice(2), {
    stdout: (text) => process.stdout.write(text),
    stderr: (text) => process.stderr.write(text),
  })
}
