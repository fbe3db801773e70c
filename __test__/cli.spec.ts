import { spawn, spawnSync } from 'node:child_process'
import { existsSync } from 'node:fs'
import { createServer } from 'node:net'

import test from 'ava'

import { join } from 'node:path'

import { NativeClient, eduLayout } from '../src/index'
import { cli, collectStderr, ensureDistBuilt, killOnTeardown, root, tempSocket, waitFor, waitForExit } from './helpers'

// These tests run the built CLI as a user would. Rebuild the TypeScript first
// if dist/ is missing or older than any source file, so a stale build is never tested.
test.before(ensureDistBuilt)

function run(...args: string[]) {
  const r = spawnSync(process.execPath, [cli, ...args], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] })
  return { code: r.status, stdout: r.stdout, stderr: r.stderr }
}

test('--help exits 0 and lists serve', (t) => {
  const r = run('--help')
  t.is(r.code, 0)
  t.regex(r.stdout, /^Usage: emudev <command>/)
  t.regex(r.stdout, /^\s+serve\s/m)
  t.regex(r.stdout, /^\s+client\s/m)
  t.is(r.stderr, '')
})

test('serve --help exits 0 and lists the drivers and their keys', (t) => {
  const r = run('serve', '--help')
  t.is(r.code, 0)
  t.regex(r.stdout, /--vdev <device>/)
  t.regex(r.stdout, /emu_iavf\s+keys: sock, queues, mac, mtu, backend, doorbells/)
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

test('serve of a driver or option that is not available exits 2 without touching sockets', (t) => {
  const sock = tempSocket(t)
  const client = run('serve', '--vdev', `emu_edu0,sock=${sock}`, '--vdev', `iavf_client0,path=${sock}.iavf`)
  t.is(client.code, 2)
  t.is(client.stderr, "emudev serve: iavf_client0: iavf_client is a client driver (use 'emudev client')\n")
  const backend = run('serve', '--vdev', `emu_edu0,sock=${sock}`, '--vdev', `emu_iavf0,sock=${sock}.iavf,backend=tap`)
  t.is(backend.code, 2)
  t.is(
    backend.stderr,
    "emudev serve: --vdev 'emu_iavf0,sock=" + sock + ".iavf,backend=tap': bad value 'tap' for 'backend' of emu_iavf0 " +
      '(expected loopback, macswap, rxonly, txonly[:LEN], pair:<peer>, pcap:<file>, pcap-replay:<file>, channel)\n',
  )
  t.false(existsSync(sock))
  t.false(existsSync(`${sock}.iavf`))
})

test('serve on a socket in use exits 1 with a one-line message', async (t) => {
  const sock = tempSocket(t)
  const other = createServer()
  await new Promise<void>((resolve) => other.listen(sock, resolve))
  t.teardown(() => new Promise<void>((resolve) => other.close(() => resolve())))
  const child = spawn(process.execPath, [cli, 'serve', '--vdev', `emu_edu0,sock=${sock}`], { stdio: ['ignore', 'pipe', 'pipe'] })
  killOnTeardown(t, child)
  const stderr = collectStderr(child)
  t.is(await waitForExit(child, 10_000), 1)
  t.is(stderr(), `emudev serve: emu_edu0: ${sock} is in use by a running server\n`)
})

for (const signal of ['SIGTERM', 'SIGINT'] as const) {
  test(`serve brings a device up for a client, and ${signal} exits 0 and removes the socket`, async (t) => {
    const sock = tempSocket(t)
    const child = spawn(process.execPath, [cli, 'serve', '--vdev', `emu_edu0,sock=${sock}`], { stdio: ['ignore', 'pipe', 'pipe'] })
    killOnTeardown(t, child)
    const stderr = collectStderr(child)
    t.true(await waitFor(() => stderr().includes('listening'), 10_000), stderr())
    t.true(existsSync(sock))
    const client = NativeClient.connect(sock)
    t.is(client.readU32(0, eduLayout().regId), 0x010000ed)
    t.true(await waitFor(() => stderr().includes('client connected'), 5000), stderr())
    await client.close()
    t.true(await waitFor(() => stderr().includes('client disconnected'), 5000), stderr())
    child.kill(signal)
    t.is(await waitForExit(child, 10_000), 0)
    t.false(existsSync(sock), 'the socket is removed')
    const lines = stderr().trimEnd().split('\n')
    t.is(lines[0], `emudev: emu_edu0 (emu_edu) listening on ${sock}`)
    t.is(lines.at(-3), `emudev: ${signal}, stopping`)
    t.is(lines.at(-2), 'emudev: emu_edu0: 1 client(s), 12 messages, 0 errors; 1 MMIO reads, 0 writes, 0 DMA transfers, 0 interrupts')
    t.is(lines.at(-1), 'emudev: stopped')
  })
}

test('serve --script: usage errors exit 2, a bad script exits 1, each with one line', (t) => {
  const edu = join(root, 'examples', 'edu.ts')
  t.is(run('serve', '--script', edu).stderr, 'emudev serve: --script needs --sock (e.g. --sock /tmp/dev.sock)\n')
  t.is(run('serve', '--script', edu).code, 2)
  const both = run('serve', '--script', edu, '--sock', '/tmp/x.sock', '--vdev', 'emu_edu0,sock=/tmp/e.sock')
  t.is(both.code, 2)
  t.is(both.stderr, 'emudev serve: --script and --vdev cannot be combined\n')
  t.is(run('serve', '--vdev', 'emu_edu0,sock=/tmp/e.sock', '--sock', '/x').code, 2)
  const missing = run('serve', '--script', '/nonexistent/dev.ts', '--sock', '/tmp/x.sock')
  t.is(missing.code, 1)
  t.is(missing.stderr, 'emudev serve: /nonexistent/dev.ts: no such file\n')
  const notDevice = run('serve', '--script', join(root, 'src', 'config.ts'), '--sock', '/tmp/x.sock')
  t.is(notDevice.code, 1)
  t.regex(notDevice.stderr, /the default export must be a PciDevice, a PciDeviceSpec, or a function returning one\n$/)
  t.regex(run('serve', '--help').stdout, /--script <file>/)
})

test('serve --script serves a TypeScript device until SIGTERM', async (t) => {
  const sock = tempSocket(t)
  const script = join(root, 'examples', 'gpio.ts')
  const child = spawn(process.execPath, [cli, 'serve', '--script', script, '--sock', sock], { stdio: ['ignore', 'pipe', 'pipe'] })
  killOnTeardown(t, child)
  const stderr = collectStderr(child)
  t.true(await waitFor(() => stderr().includes('listening'), 20_000), stderr())
  const client = NativeClient.connect(sock)
  t.is(client.regionRead(7, 0, 4).readUInt32LE(0), 0x0dc8494f)
  client.regionWrite(2, 0, Buffer.from([0x5a]))
  t.is(client.regionRead(2, 0, 1)[0], 0x5a)
  await client.close()
  t.true(await waitFor(() => stderr().includes('client disconnected'), 5000), stderr())
  child.kill('SIGTERM')
  t.is(await waitForExit(child, 10_000), 0)
  t.false(existsSync(sock))
  const lines = stderr().trimEnd().split('\n')
  t.is(lines[0], `emudev: gpio_idio16 (script ${script}) listening on ${sock}`)
  t.is(lines[1], 'emudev: gpio_idio16: client connected')
  t.is(lines.at(-1), 'emudev: stopped')
})
