// `emudev serve --vdev emu_iavf0,...` and `emudev client --vdev iavf_client,...` as processes.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process'
import { existsSync } from 'node:fs'

import test, { type ExecutionContext } from 'ava'

import { cli, collectStderr, ensureDistBuilt, killOnTeardown, runCliAsync, tempSocket, waitFor, waitForExit } from './helpers'

test.before(ensureDistBuilt)

const MAC = '02:00:00:00:00:09'

function run(...args: string[]) {
  const r = spawnSync(process.execPath, [cli, ...args], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], timeout: 30_000 })
  return { code: r.status, stdout: r.stdout, stderr: r.stderr }
}

async function startServe(t: ExecutionContext, vdev: string): Promise<{ child: ChildProcess; stderr: () => string }> {
  const child = spawn(process.execPath, [cli, 'serve', '--vdev', vdev], { stdio: ['ignore', 'pipe', 'pipe'] })
  killOnTeardown(t, child)
  const stderr = collectStderr(child)
  t.true(await waitFor(() => stderr().includes('listening'), 10_000), stderr())
  return { child, stderr }
}

test('serve emu_iavf0 + client iavf_client: link up, every step on its own line, SIGTERM exits 0', async (t) => {
  const sock = tempSocket(t, 'sock1')
  const { child, stderr } = await startServe(t, `emu_iavf0,sock=${sock},queues=4,mac=${MAC}`)
  t.is(stderr().split('\n')[0], `emudev: emu_iavf0 (emu_iavf, 4 queue pairs, mac ${MAC}, mtu 1500) listening on ${sock}`)

  const r = await runCliAsync('client', '--vdev', `iavf_client,path=${sock},queues=4`)
  t.is(r.code, 0, r.stderr)
  t.is(r.stderr, '')
  const lines = r.stdout.trimEnd().split('\n')
  t.is(lines[0], `iavf_client: bringing up the iavf VF on ${sock} (4 queue pairs)`)
  const steps = lines.filter((l) => /^ {2}[ 1-9]\d {2}\S/.test(l))
  t.true(steps.length >= 12, r.stdout)
  // Aligned: the durations all end in the same column.
  const ends = new Set(steps.map((l) => l.indexOf(' ms ')))
  t.is(ends.size, 1, r.stdout)
  t.regex(steps[0] ?? '', /^ {3}1 {2}DEVICE_RESET +\d+\.\d{3} ms {2}/)
  t.regex(steps.at(-1) ?? '', /^ {2}\d\d {2}link +\d+\.\d{3} ms {2}up, 10000 Mbps$/)
  t.true(steps.some((l) => /VIRTCHNL_OP_CONFIG_VSI_QUEUES .* 4 pair\(s\)/.test(l)))
  t.regex(r.stdout, new RegExp(`^iavf_client: link up, 10000 Mbps, mac ${MAC}, bring-up \\d+\\.\\d{3} ms$`, 'm'))
  t.regex(r.stdout, /^iavf_client: stats: rx 0 bytes, .* tx 0 bytes, .* 0 errors$/m)

  t.true(await waitFor(() => stderr().includes('link up reported to the driver'), 5000), stderr())
  t.true(await waitFor(() => stderr().includes('client disconnected'), 5000), stderr())
  child.kill('SIGTERM')
  t.is(await waitForExit(child, 10_000), 0)
  t.false(existsSync(sock), 'the socket is removed')
  const log = stderr().trimEnd().split('\n')
  t.is(log.at(-3), 'emudev: SIGTERM, stopping')
  t.regex(log.at(-2) ?? '', /^emudev: emu_iavf0: 1 client\(s\), \d+ messages, 0 errors; .*virtchnl \d+ ok \/ 0 refused .*1 link events/)
  t.is(log.at(-1), 'emudev: stopped')
})

test('client --json prints one JSON object; a refused bring-up exits 1 with one line', async (t) => {
  const sock = tempSocket(t, 'sock1')
  const { child } = await startServe(t, `emu_iavf3,sock=${sock},queues=2,mtu=9000`)
  const r = await runCliAsync('client', '--vdev', `iavf_client0,path=${sock},queues=2`, '--json')
  t.is(r.code, 0, r.stderr)
  const out = JSON.parse(r.stdout) as {
    device: string
    queues: number
    link: { up: boolean; speedMbps: number | null }
    mac: string
    totalMicros: number
    steps: { step: string; micros: number; detail: string }[]
    stats: Record<string, number>
  }
  t.is(out.device, 'iavf_client0')
  t.is(out.queues, 2)
  t.deepEqual(out.link, { up: true, speedMbps: 10_000 })
  t.regex(out.mac, /^[0-9a-f][26ae](:[0-9a-f]{2}){5}$/) // derived from the name: locally administered unicast
  t.is(out.steps.at(-1)?.step, 'link')
  t.true(out.steps.some((s) => s.step === 'VIRTCHNL_OP_GET_VF_RESOURCES' && s.detail.includes('max MTU 9026')))
  t.is(out.totalMicros, out.steps.reduce((a, s) => a + s.micros, 0))
  t.is(out.stats.txErrors, 0)

  const refused = await runCliAsync('client', '--vdev', `iavf_client,path=${sock},queues=4`)
  t.is(refused.code, 1)
  t.is(refused.stderr, 'emudev client: iavf_client: ConfigVsiQueues refused by the PF: ErrParam (-5) (ERR_EMUDEV_IAVF_REFUSED)\n')
  // The device keeps working for the next client.
  t.is((await runCliAsync('client', '--vdev', `iavf_client,path=${sock},queues=2`)).code, 0)
  child.kill('SIGTERM')
  t.is(await waitForExit(child, 10_000), 0)
})

test('client on a socket nobody serves exits 1 with one line naming the errno', (t) => {
  const sock = tempSocket(t, 'nobody.sock')
  const r = run('client', '--vdev', `iavf_client,path=${sock}`)
  t.is(r.code, 1)
  t.is(r.stderr, `emudev client: iavf_client: cannot connect to ${sock}: No such file or directory (os error 2) (ERR_VFU_ENOENT)\n`)
})

test('client usage errors exit 2 with one line', (t) => {
  const cases: [string[], string][] = [
    [['client'], "emudev client: exactly one --vdev is required (e.g. --vdev 'iavf_client,path=/tmp/sock1')\n"],
    [['client', '--vdev', 'iavf_client,path=/a', '--vdev', 'iavf_client1,path=/b'], "emudev client: exactly one --vdev is required (e.g. --vdev 'iavf_client,path=/tmp/sock1')\n"],
    [['client', '--vdev', 'emu_edu0,sock=/a'], "emudev client: --vdev must be an iavf_client device (got 'emu_edu0,sock=/a')\n"],
    [['client', '--vdev', 'iavf_client,path=/a,queues=17'], "emudev client: --vdev 'iavf_client,path=/a,queues=17': bad value '17' for 'queues' of iavf_client (expected an integer 1-16)\n"],
    [['client', '--vdev', 'iavf_client,path=/a', '--fwd', 'bounce'], "emudev client: --fwd must be one of io, macswap, rxonly, txonly (got 'bounce')\n"],
    [['client', '--vdev', 'iavf_client,path=/a', '--duration=5'], 'emudev client: --duration goes with --fwd\n'],
    [['client', '--vdev', 'iavf_client,path=/a', '--fwd', 'io', '--duration', '-1'], "emudev client: --duration must be seconds, more than 0 and at most 86400 (got '-1')\n"],
    [['client', '--vdev', 'iavf_client,path=/a', '--fwd', 'txonly', '--frame-len', '20'], "emudev client: --frame-len must be an integer from 60 to 9000 (got '20')\n"],
    [['client', '--vdev', 'iavf_client,path=/a', '--bogus'], "emudev client: unknown option '--bogus'\n"],
    [['client', '--vdev', 'iavf_client,path=/a', 'extra'], "emudev client: unexpected argument 'extra'\n"],
  ]
  for (const [args, stderr] of cases) {
    const r = run(...args)
    t.is(r.code, 2, args.join(' '))
    t.is(r.stderr, stderr, args.join(' '))
    t.is(r.stdout, '')
  }
  const help = run('client', '--help')
  t.is(help.code, 0)
  t.regex(help.stdout, /^Usage: emudev client --vdev 'iavf_client,path=<socket>/)
})

test('serve rejects bad emu_iavf keys with exit 2, naming the key', (t) => {
  const sock = tempSocket(t, 'vf.sock')
  const queues = run('serve', '--vdev', `emu_iavf0,sock=${sock},queues=17`)
  t.is(queues.code, 2)
  t.is(queues.stderr, `emudev serve: --vdev 'emu_iavf0,sock=${sock},queues=17': bad value '17' for 'queues' of emu_iavf0 (expected an integer 1-16)\n`)
  const mac = run('serve', '--vdev', `emu_iavf0,sock=${sock},mac=zz`)
  t.is(mac.code, 2)
  t.is(mac.stderr, `emudev serve: --vdev 'emu_iavf0,sock=${sock},mac=zz': bad value 'zz' for 'mac' of emu_iavf0 (expected a MAC like 02:00:00:00:00:01)\n`)
  const mtu = run('serve', '--vdev', `emu_iavf0,sock=${sock},mtu=9703`)
  t.is(mtu.code, 2)
  t.regex(mtu.stderr, /bad value '9703' for 'mtu' of emu_iavf0 \(expected an integer 68-9702\)\n$/)
  t.false(existsSync(sock))
})
