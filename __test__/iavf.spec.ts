// The emulated iavf VF (NativeServer.listenIavf) and the iavf client driver (IavfPort) in one
// process, over real UNIX sockets.
import { spawn } from 'node:child_process'
import { existsSync } from 'node:fs'
import { join } from 'node:path'

import test from 'ava'

import { IavfPort, NativeServer, isNativeError, type IavfLinkEvent, type IavfStepEvent } from '../src/index'
import { killOnTeardown, root, tempSocket, waitFor, waitForExit } from './helpers'

const MAC = '02:00:00:aa:bb:01'

function codeOf(err: unknown): unknown {
  return (err as { code?: unknown } | undefined)?.code
}

const IAVF_STATS_KEYS = [
  'mmioReads',
  'mmioWrites',
  'badAccesses',
  'aqCommands',
  'aqErrors',
  'vcOk',
  'vcErrors',
  'vcNotSupported',
  'arqDelivered',
  'arqDropped',
  'vfResets',
  'linkEvents',
  'irqsRaised',
  'irqsUndelivered',
  'irqsCoalesced',
  'irqsDeferred',
  'emuErrors',
]

test('listenIavf serves emu_iavf with its own counters; edu and iavf methods stay apart', async (t) => {
  const sock = tempSocket(t, 'vf.sock')
  const server = NativeServer.listenIavf(sock, { queues: 4, mac: MAC, mtu: 9000 })
  t.is(server.device, 'emu_iavf')
  t.is(server.path, sock)
  t.true(existsSync(sock))
  const stats = server.iavfStats()
  t.deepEqual(Object.keys(stats).sort(), [...IAVF_STATS_KEYS].sort())
  for (const k of IAVF_STATS_KEYS) t.is((stats as unknown as Record<string, unknown>)[k], 0, k)
  t.is(server.stats().clients, 0)
  const state = server.iavfState()
  t.deepEqual(state.macs, [MAC])
  t.is(state.queuePairs, 4)
  t.true(state.linkUp)
  const wrong = t.throws(() => server.eduStats())
  t.is(codeOf(wrong), 'ERR_EMUDEV_INVALID_ARG')
  t.regex(wrong?.message ?? '', /eduStats\(\) is for emu_edu servers/)

  const edu = NativeServer.listenEdu(tempSocket(t))
  t.is(edu.device, 'emu_edu')
  t.is(codeOf(t.throws(() => edu.iavfStats())), 'ERR_EMUDEV_INVALID_ARG')
  t.is(codeOf(t.throws(() => edu.setLink(false))), 'ERR_EMUDEV_INVALID_ARG')
  await edu.close()

  await server.close()
  await server.close()
  t.false(existsSync(sock), 'close removes the socket')
  t.is(codeOf(t.throws(() => server.iavfStats())), 'ERR_EMUDEV_CLOSED')
})

test('listenIavf rejects bad options with ERR_EMUDEV_INVALID_ARG naming the key', (t) => {
  const sock = tempSocket(t, 'bad.sock')
  const cases: [Parameters<typeof NativeServer.listenIavf>[1], RegExp][] = [
    [{ queues: 17 }, /^listenIavf: queues=17: must be an integer 1\.\.=16$/],
    [{ queues: 0 }, /queues=0/],
    [{ queues: 2.5 }, /queues=2\.5/],
    [{ mac: 'zz' }, /^listenIavf: mac="zz": expected six hex bytes/],
    [{ mac: '01:00:5e:00:00:01' }, /mac=01:00:5e:00:00:01: must be a unicast, non-zero address/],
    [{ mtu: 67 }, /^listenIavf: mtu=67: must be an integer 68\.\.=9702$/],
    [{ mtu: 9703 }, /mtu=9703/],
    [{ name: '' }, /name is empty/],
  ]
  for (const [options, message] of cases) {
    const err = t.throws(() => NativeServer.listenIavf(sock, options))
    t.true(isNativeError(err, 'ERR_EMUDEV_INVALID_ARG'), JSON.stringify(options))
    t.regex(err?.message ?? '', message)
  }
  t.false(existsSync(sock), 'no socket for a refused configuration')
})

for (const queues of [1, 16]) {
  test(`IavfPort brings ${queues} queue pair(s) to link-up: steps, link event, mac, stats`, async (t) => {
    const sock = tempSocket(t, 'vf.sock')
    const server = NativeServer.listenIavf(sock, { queues, mac: MAC })
    t.teardown(() => server.close())
    const port = new IavfPort(sock, { queues, ringLen: 64 })
    t.is(port.state, 'down')
    t.is(port.link, null)
    t.is(port.mac, null)
    const steps: IavfStepEvent[] = []
    const links: IavfLinkEvent[] = []
    port.on('step', (s) => steps.push(s))
    port.on('link', (l) => links.push(l))

    const up = await port.start()
    t.deepEqual(up.link, { up: true, speedMbps: 10_000 })
    t.is(up.mac, MAC)
    t.is(up.steps[0]?.step, 'DEVICE_RESET')
    t.is(up.steps.at(-1)?.step, 'link')
    t.true(up.steps.some((s) => s.step === 'VIRTCHNL_OP_CONFIG_VSI_QUEUES' && s.detail.startsWith(`${queues} pair`)))
    for (const s of up.steps) t.true(Number.isInteger(s.micros) && s.micros >= 0, s.step)
    // Every step was emitted before start() resolved, once, in order.
    t.deepEqual(
      steps.map((s) => s.step),
      up.steps.map((s) => s.step),
    )
    t.true(steps.every((s) => s.run === steps[0]?.run))

    t.is(port.state, 'running')
    t.is(port.mac, MAC)
    t.deepEqual(port.link, { up: true, speedMbps: 10_000 })
    t.true(await waitFor(() => links.length > 0, 5000), 'link event')
    t.deepEqual(links[0], { up: true, speedMbps: 10_000, mac: MAC })

    const stats = await port.stats()
    t.is(stats.rxBytes, 0)
    t.is(stats.txErrors, 0)
    t.is(stats.strayMessages, 0)
    const dev = server.iavfStats()
    t.true(dev.vcOk >= 10, JSON.stringify(dev))
    t.is(dev.vcErrors, 0)
    t.true(dev.linkEvents >= 1)
    const state = server.iavfState()
    t.is(state.txEnabled, queues)
    t.is(state.rxEnabled, queues)
    t.is(state.version, '1.1')

    await port.close()
    await port.close()
    t.true(port.closed)
    t.is(port.state, 'down')
    await t.throwsAsync(port.stats(), { code: 'ERR_EMUDEV_CLOSED' })
    await t.throwsAsync(port.start(), { code: 'ERR_EMUDEV_CLOSED' })
  })
}

test('link changes on the server reach the port as link events', async (t) => {
  const sock = tempSocket(t, 'vf.sock')
  const server = NativeServer.listenIavf(sock, { mac: MAC })
  t.teardown(() => server.close())
  const port = await IavfPort.connect(sock)
  t.teardown(() => port.close())
  const links: IavfLinkEvent[] = []
  port.on('link', (l) => links.push(l))
  await port.start()
  t.true(await waitFor(() => links.length === 1, 5000))
  server.setLink(false)
  t.true(await waitFor(() => links.length === 2, 5000), 'link down event')
  t.deepEqual(links[1], { up: false, speedMbps: 10_000, mac: MAC })
  t.deepEqual(port.link, { up: false, speedMbps: 10_000 })
  server.setLink(true)
  t.true(await waitFor(() => links.length === 3, 5000), 'link up event')
  t.true(links[2]?.up)
})

test('reset() brings the port up again with a new run of steps', async (t) => {
  const sock = tempSocket(t, 'vf.sock')
  const server = NativeServer.listenIavf(sock, { queues: 2 })
  t.teardown(() => server.close())
  const port = new IavfPort(sock, { queues: 2 })
  t.teardown(() => port.close())
  await t.throwsAsync(port.reset(), { code: 'ERR_EMUDEV_NOT_READY' })
  await t.throwsAsync(port.stats(), { code: 'ERR_EMUDEV_NOT_READY' })
  const runs = new Set<number>()
  port.on('step', (s) => runs.add(s.run))
  await port.start()
  const again = await port.reset()
  t.is(again.steps[0]?.step, 'VIRTCHNL_OP_RESET_VF')
  t.true(again.link.up)
  t.is(runs.size, 2)
  t.true(server.iavfStats().vfResets >= 1)
  t.is((await port.stats()).txErrors, 0)
})

test('a refused bring-up rejects with ERR_EMUDEV_IAVF_REFUSED and the device serves the next port', async (t) => {
  const sock = tempSocket(t, 'vf.sock')
  const server = NativeServer.listenIavf(sock, { queues: 1 })
  t.teardown(() => server.close())
  const odd = new IavfPort(sock, { ringLen: 33 })
  const err = await t.throwsAsync(odd.start(), { code: 'ERR_EMUDEV_IAVF_REFUSED' })
  t.regex(err?.message ?? '', /ConfigVsiQueues refused by the PF: ErrParam/)
  await odd.close()
  const greedy = new IavfPort(sock, { queues: 4 })
  await t.throwsAsync(greedy.start(), { code: 'ERR_EMUDEV_IAVF_REFUSED' })
  await greedy.close()
  t.true(server.iavfStats().vcErrors >= 2)
  const good = new IavfPort(sock)
  t.true((await good.start()).link.up)
  await good.close()
})

test('IavfPort options and connection failures have stable codes', async (t) => {
  await t.throwsAsync(IavfPort.connect(tempSocket(t, 'nobody.sock')), { code: 'ERR_VFU_ENOENT' })
  const sock = tempSocket(t, 'vf.sock')
  const server = NativeServer.listenIavf(sock)
  t.teardown(() => server.close())
  for (const options of [{ queues: 0 }, { queues: 33 }, { ringLen: 0.5 }, { opTimeoutMs: 0 }]) {
    await t.throwsAsync(IavfPort.connect(sock, options), { code: 'ERR_EMUDEV_INVALID_ARG' }, JSON.stringify(options))
  }
  const mode = await t.throwsAsync(IavfPort.connect(sock, { enableMode: 'sideways' as 'per-queue' }))
  t.is(codeOf(mode), 'ERR_EMUDEV_INVALID_ARG')
  t.regex(mode?.message ?? '', /^enableMode must be/)
})

test('close() while start() is pending settles start and leaves the device usable', async (t) => {
  const sock = tempSocket(t, 'vf.sock')
  const server = NativeServer.listenIavf(sock)
  t.teardown(() => server.close())
  const port = await IavfPort.connect(sock)
  const started = port.start().then(
    () => 'resolved',
    (e: unknown) => codeOf(e),
  )
  await port.close()
  t.true(['resolved', 'ERR_EMUDEV_CLOSED'].includes((await started) as string))
  const next = new IavfPort(sock)
  t.true((await next.start()).link.up)
  await next.close()
  // A port closed before it ever connected.
  const never = new IavfPort(sock)
  await never.close()
  await t.throwsAsync(never.start(), { code: 'ERR_EMUDEV_CLOSED' })
})

test('after the server and the port are closed, Node exits by itself', async (t) => {
  const sock = tempSocket(t, 'vf.sock')
  const script = `
    const { NativeServer, NativeIavfPort } = require(${JSON.stringify(join(root, 'index.js'))})
    const sock = ${JSON.stringify(sock)}
    ;(async () => {
      const server = NativeServer.listenIavf(sock, { queues: 2 })
      let links = 0
      const port = await NativeIavfPort.connect(sock, { queues: 2 }, (e) => { if (e.type === 'link') links++ })
      const up = await port.start()
      server.setLink(false)
      await new Promise((r) => setTimeout(r, 50))
      await port.close()
      await port.close()
      await server.close()
      console.log('link', up.link.up, 'events', links >= 1)
    })().catch((e) => { console.error(e); process.exitCode = 1 })
  `
  const child = spawn(process.execPath, ['-e', script], { stdio: ['ignore', 'pipe', 'pipe'] })
  killOnTeardown(t, child)
  let out = ''
  let err = ''
  child.stdout.setEncoding('utf8').on('data', (c: string) => (out += c))
  child.stderr.setEncoding('utf8').on('data', (c: string) => (err += c))
  t.is(await waitForExit(child, 15_000), 0, err)
  t.is(out, 'link true events true\n')
  t.false(existsSync(sock))
})

test('a port that is never closed does not keep Node alive either', async (t) => {
  const sock = tempSocket(t, 'vf.sock')
  const script = `
    const { NativeServer, NativeIavfPort } = require(${JSON.stringify(join(root, 'index.js'))})
    ;(async () => {
      const server = NativeServer.listenIavf(${JSON.stringify(sock)})
      const port = await NativeIavfPort.connect(${JSON.stringify(sock)}, {}, () => {})
      await port.start()
      await server.close()
      console.log('left open')
    })().catch((e) => { console.error(e); process.exitCode = 1 })
  `
  const child = spawn(process.execPath, ['-e', script], { stdio: ['ignore', 'pipe', 'pipe'] })
  killOnTeardown(t, child)
  let out = ''
  child.stdout.setEncoding('utf8').on('data', (c: string) => (out += c))
  t.is(await waitForExit(child, 15_000), 0)
  t.is(out, 'left open\n')
})
