// The package as a process: `npm run demo`, and that closed native objects let Node exit.
import { spawn, spawnSync } from 'node:child_process'
import { join } from 'node:path'

import test from 'ava'

import { demo, ensureDistBuilt, killOnTeardown, root, tempSocket, waitForExit } from './helpers'

test.before(ensureDistBuilt)

test('the demo (node dist/demo.js) exits 0 and prints each step', (t) => {
  const r = spawnSync(process.execPath, [demo], { encoding: 'utf8', timeout: 60_000 })
  t.is(r.status, 0, r.stderr)
  t.regex(r.stdout, /^ {2}factorial +10! = 3628800$/m)
  t.regex(r.stdout, /^ {2}id +0x010000ed -> edu v1\.0$/m)
  t.regex(r.stdout, /^ {2}dma .*identical$/m)
  t.regex(r.stdout, /^ {2}msi +raise 0x1 -> eventfd count 1/m)
  t.regex(r.stdout, /socket removed/)
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
