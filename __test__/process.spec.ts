// The package as a process: `npm run demo`, and that closed native objects let Node exit.
import { spawn, spawnSync } from 'node:child_process'
import { join } from 'node:path'

import test from 'ava'

import { demo, ensureDistBuilt, killOnTeardown, root, tempSocket, waitForExit } from './helpers'

test.before(ensureDistBuilt)

test('the demo (node dist/demo.js): iavf bring-up, forwarding, the summary and a pcap of the first frames', (t) => {
  const r = spawnSync(process.execPath, [demo], { encoding: 'utf8', timeout: 90_000 })
  t.is(r.status, 0, r.stderr)
  t.regex(r.stdout, /^ {2}attach +emudev> port attach net_iavfbe,emu=emu_iavf0 +-> +Port 0 attached to emu_iavf0/m)
  t.regex(r.stdout, /^ {2}bring-up +14 steps in [0-9.]+ ms: DEVICE_RESET, .*, link$/m)
  t.regex(r.stdout, /^ {2}link +up, /m)
  const got = /packets received \(client\) +(\d+)/.exec(r.stdout)
  t.truthy(got)
  t.true(Number(got?.[1]) > 512, r.stdout)
  // Every frame the client sent was taken by the device and came back: nothing dropped.
  const dev = /device RX \/ dropped \/ TX +(\d+) \/ (\d+) \/ (\d+)/.exec(r.stdout)
  const sent = /packets sent \(client\) +(\d+)/.exec(r.stdout)
  t.is(dev?.[2], '0')
  t.is(dev?.[3], sent?.[1])
  t.regex(r.stdout, /pcap of the first frames +\S+first-packets\.pcap \(64 frames, 64 UDP\/IPv4\)/)
  t.regex(r.stdout, /socket removed/)
  t.regex(r.stdout, /^ok$/m)
  t.is(r.stderr, '')
})

test('the edu demo (node dist/demo.js --edu) exits 0 and prints each step', (t) => {
  const r = spawnSync(process.execPath, [demo, '--edu'], { encoding: 'utf8', timeout: 60_000 })
  t.is(r.status, 0, r.stderr)
  t.regex(r.stdout, /^ {2}factorial +10! = 3628800$/m)
  t.regex(r.stdout, /^ {2}id +0x010000ed -> edu v1\.0$/m)
  t.regex(r.stdout, /^ {2}dma .*identical$/m)
  t.regex(r.stdout, /^ {2}msi +raise 0x1 -> eventfd count 1/m)
  t.regex(r.stdout, /socket removed/)
  t.regex(r.stdout, /^ok$/m)
  t.is(r.stderr, '')
})

test('the demo drives the TypeScript edu (--script examples/edu.ts) with the same results', (t) => {
  const r = spawnSync(process.execPath, [demo, '--script', join(root, 'examples', 'edu.ts')], {
    encoding: 'utf8',
    timeout: 60_000,
  })
  t.is(r.status, 0, r.stderr)
  t.regex(r.stdout, /^ {2}server +emudev serve --script .*examples\/edu\.ts --sock /m)
  t.regex(r.stdout, /^ {2}factorial +10! = 3628800$/m)
  t.regex(r.stdout, /^ {2}id +0x010000ed -> edu v1\.0$/m)
  t.regex(r.stdout, /^ {2}dma .*identical$/m)
  t.regex(r.stdout, /^ {2}msi +raise 0x1 -> eventfd count 1, status 0x1, ack -> 0x0$/m)
  t.regex(r.stdout, /server \| emu_edu_ts \(script .*\) listening on /)
  t.regex(r.stdout, /^ok$/m)
  t.is(r.stderr, '')
})

test('after every NativeServer and NativeClient is closed, Node exits by itself', async (t) => {
  const sock = tempSocket(t)
  const script = `
    const { NativeServer, NativeClient } = require(${JSON.stringify(join(root, 'index.js'))})
    const sock = ${JSON.stringify(sock)}
    ;(async () => {
      const server = NativeServer.listenEdu(sock)
      const client = NativeClient.connect(sock, { twinSocket: true })
      client.allocDma(0x100000n, 4096, false).write(0, Buffer.from([1, 2, 3]))
      client.enableIrqs(1, 1)
      await client.waitIrq(1, 0, 10).catch((e) => { if (e.code !== 'ERR_EMUDEV_TIMEOUT') throw e })
      const pending = client.waitIrq(1, 0, 60000).catch((e) => e.code)
      await client.close()
      console.log('pending wait:', await pending)
      await server.close()
      console.log('closed')
    })().catch((e) => { console.error(e); process.exitCode = 1 })
  `
  const child = spawn(process.execPath, ['-e', script], { stdio: ['ignore', 'pipe', 'pipe'] })
  killOnTeardown(t, child)
  let out = ''
  child.stdout.setEncoding('utf8').on('data', (c: string) => (out += c))
  let err = ''
  child.stderr.setEncoding('utf8').on('data', (c: string) => (err += c))
  const started = Date.now()
  t.is(await waitForExit(child, 5000), 0, `still running or failed after ${Date.now() - started} ms: ${err}`)
  t.is(out, 'pending wait: ERR_EMUDEV_CLOSED\nclosed\n')
})

/** Runs `script` in a child `node -e`; resolves with its exit code (null: still running after `ms`) and output. */
async function runChild(t: import('ava').ExecutionContext, script: string, ms: number) {
  const child = spawn(process.execPath, ['-e', script], { stdio: ['ignore', 'pipe', 'pipe'] })
  killOnTeardown(t, child)
  let out = ''
  child.stdout.setEncoding('utf8').on('data', (c: string) => (out += c))
  let err = ''
  child.stderr.setEncoding('utf8').on('data', (c: string) => (err += c))
  const code = await waitForExit(child, ms)
  return { code, out, err }
}

/** A child script prelude: the built package and a small TypeScript-style device on `sock`. */
function devicePrelude(sock: string): string {
  return `
    const { PciDevice, VfioUserClient } = require(${JSON.stringify(join(root, 'dist', 'index.js'))})
    const sock = ${JSON.stringify(sock)}
    const device = new PciDevice({
      ids: { vendorId: 0x1234, deviceId: 0x0001 },
      bars: [{ index: 0, size: 4096 }],
      handlers: { read: (bar, offset) => offset + 5, write: () => {} },
    })
  `
}

test('a listening PciDevice keeps Node alive until close(), then Node exits by itself', async (t) => {
  const sock = tempSocket(t)
  const script = `${devicePrelude(sock)}
    ;(async () => {
      await device.listen(sock)
      const client = await VfioUserClient.connect(sock, { twinSocket: true })
      console.log('read', await client.readU32(0, 0))
      await client.enableIrqs(0, 1)
      device.irq(0)
      console.log('irq', await client.waitIrq(0, 0, 2000))
      const pending = client.waitIrq(0, 0, 60000).catch((e) => e.code)
      await client.close()
      console.log('pending wait:', await pending)
      // Nothing else keeps the loop alive now: only the listening device.
      setTimeout(() => {
        console.log('still alive, listening:', device.listening)
        device.close().then(() => console.log('closed'))
      }, 300).unref()
    })().catch((e) => { console.error(e); process.exitCode = 1 })
  `
  const started = Date.now()
  const r = await runChild(t, script, 5000)
  t.is(r.code, 0, `still running or failed after ${Date.now() - started} ms: ${r.err}`)
  t.is(r.out, 'read 5\nirq 1\npending wait: ERR_EMUDEV_CLOSED\nstill alive, listening: true\nclosed\n')
  t.is(r.err, '')
})

test('an unref()ed device lets Node exit without close(), without a crash', async (t) => {
  const sock = tempSocket(t)
  const script = `${devicePrelude(sock)}
    ;(async () => {
      await device.listen(sock)
      const client = await VfioUserClient.connect(sock)
      console.log('read', await client.readU32(0, 8))
      device.unref()
    })().catch((e) => { console.error(e); process.exitCode = 1 })
  `
  for (let i = 0; i < 3; i++) {
    const r = await runChild(t, script, 5000)
    t.is(r.code, 0, r.err)
    t.is(r.out, 'read 13\n')
  }
})
