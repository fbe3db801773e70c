import { spawnSync, execFileSync } from 'node:child_process'
import { existsSync, readdirSync, statSync } from 'node:fs'
import { join } from 'node:path'

import test from 'ava'

const root = join(__dirname, '..')
const cli = join(root, 'dist', 'cli.js')

// These tests run the built CLI as a user would. Rebuild the TypeScript first
// if dist/ is missing or older than any source file, so a stale build is never tested.
test.before(() => {
  const src = join(root, 'src')
  const newest = Math.max(...readdirSync(src).map((f) => statSync(join(src, f)).mtimeMs))
  if (!existsSync(cli) || statSync(cli).mtimeMs < newest) {
    execFileSync(process.execPath, [require.resolve('typescript/bin/tsc'), '-p', join(root, 'tsconfig.json')], {
      stdio: 'inherit',
    })
  }
})

function run(...args: string[]) {
  const r = spawnSync(process.execPath, [cli, ...args], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] })
  return { code: r.status, stdout: r.stdout, stderr: r.stderr }
}

test('--help exits 0 and lists serve', (t) => {
  const r = run('--help')
  t.is(r.code, 0)
  t.regex(r.stdout, /^Usage: emudev <command>/)
  t.regex(r.stdout, /^\s+serve\s/m)
  t.is(r.stderr, '')
})

test('serve --help exits 0 and lists the drivers and their keys', (t) => {
  const r = run('serve', '--help')
  t.is(r.code, 0)
  t.regex(r.stdout, /--vdev <device>/)
  t.regex(r.stdout, /emu_iavf\s+keys: sock, queues, mac, mtu, backend/)
})

test('--version prints the package and native versions', (t) => {
  const r = run('--version')
  t.is(r.code, 0)
  t.is(r.stdout, 'emudev 0.1.0 (native 0.1.0)\n')
})

test('an unknown flag exits 2 with a one-line message', (t) => {
  const r = run('--frobnicate')
  t.is(r.code, 2)
  t.is(r.stderr, "emudev: unknown option '--frobnicate'\n")
  t.is(r.stdout, '')
})

test('an unknown serve flag exits 2 naming the flag', (t) => {
  const r = run('serve', '--vdev', 'emu_edu0,sock=/tmp/e.sock', '--bogus')
  t.is(r.code, 2)
  t.is(r.stderr, "emudev serve: unknown option '--bogus'\n")
})

test('a bad vdev key exits 2 naming the key', (t) => {
  const r = run('serve', '--vdev', 'emu_edu0,sock=/tmp/e.sock,foo=1')
  t.is(r.code, 2)
  t.is(r.stderr, "emudev serve: --vdev 'emu_edu0,sock=/tmp/e.sock,foo=1': unknown key 'foo' for emu_edu0 (allowed: sock)\n")
})

test('a bad vdev value in the second --vdev exits 2 naming it', (t) => {
  const r = run('serve', '--vdev', 'emu_edu0,sock=/tmp/e.sock', '--vdev=emu_iavf0,sock=/tmp/i.sock,queues=17')
  t.is(r.code, 2)
  t.regex(r.stderr, /^emudev serve: --vdev 'emu_iavf0,sock=\/tmp\/i\.sock,queues=17': bad value '17' for 'queues'/)
  t.is(r.stderr.split('\n').length, 2)
})

test('serve without --vdev, a missing value, a stray argument or no command exit 2', (t) => {
  t.is(run('serve').stderr, "emudev serve: at least one --vdev is required (e.g. --vdev 'emu_edu0,sock=/tmp/edu.sock')\n")
  t.is(run('serve', '--vdev').stderr, "emudev serve: option '--vdev' needs a value\n")
  t.is(run('serve', '--vdev', 'emu_edu0,sock=/s', 'extra').stderr, "emudev serve: unexpected argument 'extra'\n")
  t.is(run('--help=yes').stderr, "emudev: option '--help' takes no value\n")
  t.is(run('launch').stderr, "emudev: unknown command 'launch' (try 'emudev --help')\n")
  t.is(run().stderr, "emudev: missing command (try 'emudev --help')\n")
  for (const args of [['serve'], ['serve', '--vdev'], ['launch'], []]) t.is(run(...args).code, 2, args.join(' '))
})

test('serve with valid devices says it is not wired yet and exits 1', (t) => {
  const r = run('serve', '--vdev', 'emu_edu0,sock=/tmp/e.sock')
  t.is(r.code, 1)
  t.is(r.stderr, 'serve: not yet wired to the native server\n')
})
