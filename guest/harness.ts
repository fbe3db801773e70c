/**
 * Real-driver tests: an unmodified Linux guest in QEMU drives emudev's devices.
 *
 * `npm run test:guest` (`node --import=tsx guest/harness.ts [--verbose] [--rebuild] [scenario...]`):
 *
 * 1. Builds, once, a Debian trixie chroot into `.cache/guest/trixie` (gitignored):
 *    qemu-system-x86 from trixie-backports (its `vfio-user-pci` is the client),
 *    the trixie kernel, busybox-static, kmod (`guest/build-chroot.sh`). A stamp
 *    file records {@link CACHE_VERSION}; a different version rebuilds it.
 * 2. Builds the guest's busybox initramfs inside the chroot
 *    (`guest/mkinitramfs.sh`) from `guest/init.sh`, `guest/lib.sh`,
 *    `guest/scenarios/*.sh` and the kernel modules the scenarios need; rebuilt
 *    whenever one of those inputs changes.
 * 3. For each scenario: serves its devices in this process (native devices
 *    through the binding, TypeScript ones as `PciDevice`s), on sockets inside the chroot (`/run/emudev/<id>.sock` as QEMU sees
 *    them), boots the guest under TCG with one `vfio-user-pci` device per
 *    server, the scenario's CPU count (`-smp`, 1 unless it says otherwise)
 *    and `emudev.scenario=<name>` on the kernel command line, and
 *    checks the guest's `EMUDEV-CHECK name=value` lines and the servers'
 *    counters. Each scenario has a time limit; QEMU is killed by pid, sockets
 *    are removed and nothing stays mounted on every way out (signals too).
 *
 * Needs root (chroot, mknod, debootstrap) and the host's apt sources to name
 * a Debian mirror (or `EMUDEV_DEBIAN_MIRROR`). Environment:
 * `EMUDEV_GUEST_CACHE` (cache folder), `EMUDEV_GUEST_TIMEOUT_S` (per-scenario
 * limit, default 180), `EMUDEV_DEBIAN_MIRROR` / `EMUDEV_DEBIAN_SECURITY_MIRROR`.
 * Exit status: 0 all scenarios passed, 1 one failed, 2 the harness could not run.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process'
import { createHash } from 'node:crypto'
import {
  closeSync,
  existsSync,
  mkdirSync,
  openSync,
  readdirSync,
  readFileSync,
  rmSync,
  writeFileSync,
  writeSync,
} from 'node:fs'
import { join, resolve } from 'node:path'

import { native } from '../src/native'
import { IavfPort } from '../src/iavf'
import { IGNORE_REASONS, Responder } from '../src/responder'
import { EduDevice } from '../examples/edu'
import { GpioDevice } from '../examples/gpio'
import { findMirrors, MirrorError } from './apt'
import { QemuTrace } from './trace'
import type { DatapathStats, EduStats, IavfServerOptions, IavfStats, ServerStats } from '../index.js'

// ---------------------------------------------------------------------------
// Configuration

/** The harness could not run (setup, not a failed scenario). */
class HarnessError extends Error {}

/**
 * Bump to rebuild every cached chroot. The stamp also holds a hash of
 * `build-chroot.sh`, so editing the package list there rebuilds too.
 */
const CACHE_VERSION = 1

const ROOT = resolve(__dirname, '..')
const GUEST_SRC = __dirname
const CACHE = resolve(process.env.EMUDEV_GUEST_CACHE ?? join(ROOT, '.cache', 'guest'))
const CH = join(CACHE, 'trixie')
const CHROOT_STAMP = join(CACHE, 'chroot.stamp')
/** Where the staged scripts and the initramfs live, inside the chroot. */
const GUEST_DIR_INSIDE = '/emudev'
const INITRD_INSIDE = `${GUEST_DIR_INSIDE}/initrd.cpio.gz`
const SOCK_DIR_INSIDE = '/run/emudev'

const BUILD_LIMIT_MS = 20 * 60_000
const SCENARIO_LIMIT_MS = secondsFromEnv('EMUDEV_GUEST_TIMEOUT_S', 180) * 1000
const GUEST_MEMORY_MB = 256
/** How long a server may take to notice that QEMU is gone. */
const DISCONNECT_WAIT_MS = 3000

function secondsFromEnv(name: string, fallback: number): number {
  const raw = process.env[name]
  if (raw === undefined || raw === '') return fallback
  const n = Number(raw)
  if (!Number.isFinite(n) || n <= 0 || n > 3600) throw new HarnessError(`${name}=${raw}: expected seconds, 1 to 3600`)
  return n
}

// ---------------------------------------------------------------------------
// Scenarios

/** A device the harness serves for one boot. */
interface DeviceUnderTest {
  /** Socket name (`<id>.sock`) and QEMU device id. */
  readonly id: string
  /** Starts serving on `hostPath`. */
  start(hostPath: string): RunningServer | Promise<RunningServer>
}

/** A served device, as the harness sees it. */
interface RunningServer {
  stats(): ServerStats
  /** The device's own counters. */
  deviceStats(): Record<string, number>
  close(): Promise<void>
}

/** A guest measurement (`EMUDEV-CHECK name=value`) and what it must be. */
interface GuestExpectation {
  readonly name: string
  readonly want: string
  readonly ok: (value: number) => boolean
}

/** Counters after the run, per device id. */
interface Counters {
  readonly server: ServerStats
  readonly device: Record<string, number>
}

/** A check of the servers' counters. */
interface HostCheck {
  readonly name: string
  readonly want: string
  readonly got: (c: Counters) => number | boolean
  readonly ok: (v: number | boolean) => boolean
}

interface Scenario {
  readonly name: string
  readonly description: string
  /**
   * Guest CPUs (`-smp`, default 1). Linux's iavf uses min(queue pairs,
   * online CPUs) queue pairs, so a multi-queue VF needs as many CPUs.
   */
  readonly cpus?: number
  /** The guest script, guest/scenarios/<script>.sh (default: the scenario's name). */
  readonly script?: string
  /** Kernel modules (with their dependencies) the initramfs must hold. */
  readonly modules: readonly string[]
  readonly devices: readonly DeviceUnderTest[]
  readonly guest: readonly GuestExpectation[]
  /** Host checks per device id. */
  readonly host: Readonly<Record<string, readonly HostCheck[]>>
}

/** The guest must print `value`; `want` shows it in hex (what devmem prints) or decimal. */
const equals = (name: string, value: number, radix: 10 | 16 = 16): GuestExpectation => ({
  name,
  want: radix === 16 ? `0x${value.toString(16)}` : String(value),
  ok: (v) => v === value,
})
const decimal = (name: string, value: number) => equals(name, value, 10)
const atLeast = (name: string, min: number, got: (c: Counters) => number): HostCheck => ({
  name,
  want: `>= ${min}`,
  got,
  ok: (v) => typeof v === 'number' && v >= min,
})
const exactly = (name: string, want: number | boolean, got: (c: Counters) => number | boolean): HostCheck => ({
  name,
  want: `== ${String(want)}`,
  got,
  ok: (v) => v === want,
})

/** The common server-side checks: a client came, talked, got no errors, and left. */
function serverChecks(): HostCheck[] {
  return [
    atLeast('clients', 1, (c) => c.server.clients),
    atLeast('messages', 1, (c) => c.server.messages),
    exactly('errors', 0, (c) => c.server.errors),
    exactly('connected after QEMU exit', false, (c) => c.server.connected),
  ]
}

function eduDevice(id: string): DeviceUnderTest {
  return {
    id,
    start(hostPath) {
      const server = native.NativeServer.listenEdu(hostPath)
      return {
        stats: () => server.stats(),
        deviceStats: (): Record<string, number> => ({ ...server.eduStats() }),
        close: () => server.close(),
      }
    },
  }
}

const dev = (name: keyof EduStats) => (c: Counters) => c.device[name] ?? Number.NaN

function iavfDevice(id: string, options: IavfServerOptions): DeviceUnderTest {
  return {
    id,
    start(hostPath) {
      const server = native.NativeServer.listenIavf(hostPath, options)
      return {
        stats: () => server.stats(),
        deviceStats: (): Record<string, number> => ({ ...server.iavfStats() }),
        close: () => server.close(),
      }
    },
  }
}

const iavfStat = (name: keyof IavfStats) => (c: Counters) => c.device[name] ?? Number.NaN

/** The MAC both iavf scenarios configure, as the guest prints it (`mac_hex`). */
const IAVF_MAC = '02:00:00:00:00:01'
const IAVF_MAC_HEX = 0x020000000001

/**
 * The iavf scenario (guest/scenarios/iavf.sh) against a VF with `queues`
 * queue pairs; the guest gets as many CPUs (see {@link Scenario.cpus}).
 */
function iavfScenario(name: string, queues: number, doorbellPages = false): Scenario {
  const id = 'iavf0'
  return {
    name,
    description:
      `Linux iavf driver on emu_iavf (8086:1889, ${queues} queue pair${queues === 1 ? '' : 's'}, mac=${IAVF_MAC}` +
      `${doorbellPages ? ', tail registers on mmapped doorbell pages' : ''}):` +
      ' probe, virtchnl, link, MTU, rmmod/insmod',
    cpus: queues,
    modules: ['iavf'],
    devices: [iavfDevice(id, { queues, mac: IAVF_MAC, mtu: 1500, doorbellPages })],
    guest: [
      decimal('found', 1),
      decimal('bound', 1),
      // one vector for the admin queue, one per queue pair
      decimal('msix_vectors', queues + 1),
      equals('mac', IAVF_MAC_HEX),
      decimal('mtu', 1500),
      decimal('rx_queues', queues),
      decimal('tx_queues', queues),
      decimal('carrier', 1),
      decimal('carrier_after_3s', 1),
      // 9000 is above the VF's max_mtu: refused, nothing changes
      decimal('mtu9000_rc', 1),
      decimal('mtu_after_9000', 1500),
      // taken; iavf resets the VF to apply it and the carrier goes off and on
      decimal('mtu1400_rc', 0),
      decimal('mtu1400_after', 1400),
      decimal('mtu1400_carrier_changes', 2),
      decimal('mtu1400_carrier', 1),
      decimal('mtu1500_rc', 0),
      decimal('mtu1500_after', 1500),
      decimal('mtu1500_carrier_changes', 2),
      decimal('mtu1500_carrier', 1),
      decimal('removed_bound', 0),
      decimal('reload_bound', 1),
      equals('reload_mac', IAVF_MAC_HEX),
      decimal('reload_carrier', 1),
      decimal('tx_timeouts', 0),
      decimal('dmesg_errors', 0),
      decimal('kernel_warnings', 0),
    ],
    host: {
      [id]: [
        ...serverChecks(),
        atLeast('vcOk', 1, iavfStat('vcOk')),
        exactly('vcErrors', 0, iavfStat('vcErrors')),
        exactly('aqErrors', 0, iavfStat('aqErrors')),
        // link up, after each of the two MTU resets, after the reload
        atLeast('linkEvents', 3, iavfStat('linkEvents')),
        // at least the two MTU resets and the one rmmod asks for (a run counts 6)
        atLeast('vfResets', 3, iavfStat('vfResets')),
        exactly('irqsUndelivered', 0, iavfStat('irqsUndelivered')),
        exactly('arqDropped', 0, iavfStat('arqDropped')),
        exactly('badAccesses', 0, iavfStat('badAccesses')),
        exactly('emuErrors', 0, iavfStat('emuErrors')),
      ],
    },
  }
}

// The ping scenario: the guest's VF and a peer VF joined by the software data path.

/** Bytes the guest sends to the responder's TCP discard port (iavf-ping.sh has the same number). */
const TCP_BULK_BYTES = 1048576

/** The pings the guest sends (guest/scenarios/iavf-ping.sh has the same number). */
const PING_COUNT = 20
/** The guest is 198.18.0.1/24 (set in iavf-ping.sh); the responder answers for this address. */
const PING_PEER_IP = '198.18.0.2'
/** The peer VF's MAC, which the responder answers from. */
const IAVF_PEER_MAC = '02:00:00:00:00:02'
const IAVF_PEER_MAC_HEX = 0x020000000002

/** The data-path counters summed over the queues, as `<prefix>TxPackets`, ... */
function datapathTotals(stats: DatapathStats, prefix: string): Record<string, number> {
  const keys = ['txPackets', 'txBytes', 'txErrors', 'rxPackets', 'rxBytes', 'rxErrors', 'rxDrops', 'txOffloaded', 'txTso'] as const
  const out: Record<string, number> = {}
  for (const k of keys) out[`${prefix}${k[0]!.toUpperCase()}${k.slice(1)}`] = 0
  for (const q of stats.queues) {
    for (const k of keys) out[`${prefix}${k[0]!.toUpperCase()}${k.slice(1)}`]! += q[k]
  }
  return out
}

/** Runs every step, even after one fails; then throws the first failure, if any. */
async function closeAll(steps: readonly (() => Promise<void> | void)[]): Promise<void> {
  let first: { err: unknown } | undefined
  for (const step of steps) {
    try {
      await step()
    } catch (err) {
      first ??= { err }
    }
  }
  if (first !== undefined) throw first.err
}

/** The devices of the ping scenario and the counters they reported. */
interface PingRig {
  readonly device: DeviceUnderTest
  /**
   * What `deviceStats()` returned last (the guest-side checks compare the
   * guest's numbers with it); `close()` adds the client's GET_STATS
   * counters (`client*`), which only an asynchronous call can read.
   */
  readonly last: Record<string, number>
}

/**
 * The ping scenario's devices, all served here: `emu_iavf0` for QEMU
 * (back-end `pair:emu_iavf1`) and its peer `emu_iavf1` (back-end
 * `pair:emu_iavf0`, on `<id>-peer.sock`, not given to QEMU), which
 * emudev's iavf client ({@link IavfPort}) brings up and a {@link Responder}
 * for {@link PING_PEER_IP} serves. One `DeviceUnderTest` so the harness
 * boots QEMU with the guest's VF only; its counters are emu_iavf0's
 * (`iavfStats()`, unprefixed), its data path (`dp*`), the peer's (`peer*`),
 * the responder's (`resp*`) and the client's (`client*`, after close).
 */
function iavfPingRig(id: string, queues: number, doorbellPages: boolean): PingRig {
  const last: Record<string, number> = {}
  const device: DeviceUnderTest = {
    id,
    async start(hostPath) {
      const peerPath = `${hostPath.replace(/\.sock$/, '')}-peer.sock`
      const removePeerSocket = () => {
        rmSync(peerPath, { force: true })
        live.delete(`sock:${id}-peer`)
      }
      live.set(`sock:${id}-peer`, () => rmSync(peerPath, { force: true }))
      const guestOptions: IavfServerOptions = {
        name: 'emu_iavf0',
        queues,
        mac: IAVF_MAC,
        mtu: 1500,
        doorbellPages,
        backend: 'pair:emu_iavf1',
      }
      const peerOptions: IavfServerOptions = {
        name: 'emu_iavf1',
        queues: 1,
        mac: IAVF_PEER_MAC,
        mtu: 1500,
        backend: 'pair:emu_iavf0',
      }
      const guestSide = native.NativeServer.listenIavf(hostPath, guestOptions)
      let peer: ReturnType<typeof native.NativeServer.listenIavf> | undefined
      let port: IavfPort | undefined
      const portErrors: string[] = []
      let loopError: unknown
      let responder: Responder
      let running: Promise<void>
      try {
        peer = native.NativeServer.listenIavf(peerPath, peerOptions)
        port = await IavfPort.connect(peerPath, { queues: 1 })
        port.on('error', (err) => portErrors.push(err instanceof Error ? err.message : String(err)))
        await port.start()
        responder = new Responder(port, { ip: PING_PEER_IP })
        running = responder.start().catch((err: unknown) => {
          loopError = err
        })
      } catch (err) {
        await closeAll([() => port?.close(), () => peer?.close(), () => guestSide.close(), removePeerSocket])
        throw err
      }
      const peerServer = peer
      const peerPort = port
      return {
        stats: () => guestSide.stats(),
        deviceStats: (): Record<string, number> => {
          const r = responder.stats()
          const p = peerServer.iavfStats()
          const ps = peerServer.stats()
          Object.assign(last, {
            ...guestSide.iavfStats(),
            ...datapathTotals(guestSide.datapathStats(), 'dp'),
            ...datapathTotals(peerServer.datapathStats(), 'peerDp'),
            peerClients: ps.clients,
            peerServerErrors: ps.errors,
            peerVcErrors: p.vcErrors,
            peerAqErrors: p.aqErrors,
            peerBadAccesses: p.badAccesses,
            peerEmuErrors: p.emuErrors,
            respReceived: r.received,
            respReceivedBytes: r.receivedBytes,
            respReceivedBroadcast: r.receivedBroadcast,
            respArpRequests: r.arpRequests,
            respEchoRequests: r.echoRequests,
            respUdpDatagrams: r.udpDatagrams,
            respTcpSegments: r.tcpSegments,
            respTcpConnections: r.tcpConnections,
            respTcpBytes: r.tcpBytes,
            respTcpClosed: r.tcpClosed,
            respIgnored: r.ignored,
            ...Object.fromEntries(IGNORE_REASONS.map((why) => [`respIgnored:${why}`, r.ignoredBy[why]])),
            respArpReplies: r.arpReplies,
            respEchoReplies: r.echoReplies,
            respUnreachableReplies: r.unreachableReplies,
            respTcpResets: r.tcpResets,
            respTcpAcks: r.tcpAcks,
            respSent: r.sent,
            respSentBytes: r.sentBytes,
            respSendDropped: r.sendDropped,
            respLoopErrors: loopError === undefined ? 0 : 1,
            portErrors: portErrors.length,
          })
          return last
        },
        close: async () => {
          try {
            last.respStopped = (await responder.stop()) ? 1 : 0
            await running
            if (loopError !== undefined) console.log(`  info      responder: ${String(loopError)}`)
            for (const e of portErrors) console.log(`  info      IavfPort: ${e}`)
            // GET_STATS of the peer VF as its client sees it (bounded by the port's op timeout).
            const s = await peerPort.stats()
            Object.assign(last, {
              clientRxPackets: s.rxUnicast + s.rxMulticast + s.rxBroadcast,
              clientRxBroadcast: s.rxBroadcast,
              clientRxBytes: s.rxBytes,
              clientRxDiscards: s.rxDiscards,
              clientTxPackets: s.txUnicast + s.txMulticast + s.txBroadcast,
              clientTxBytes: s.txBytes,
              clientTxDiscards: s.txDiscards,
              clientTxErrors: s.txErrors,
            })
          } finally {
            await closeAll([() => peerPort.close(), () => peerServer.close(), () => guestSide.close(), removePeerSocket])
          }
        },
      }
    },
  }
  return { device, last }
}

/** The guest's `name` must equal the device counter `key` read after the run (and exceed `above`). */
function guestSameAs(name: string, last: Readonly<Record<string, number>>, key: string, above = -1): GuestExpectation {
  return {
    name,
    get want() {
      return `== ${key} (${last[key] ?? 'unread'})${above >= 0 ? `, > ${above}` : ''}`
    },
    ok: (v) => v === last[key] && v > above,
  }
}

/** Two device counters must be equal (`a` is shown as got, `b` in the expectation). */
function sameAs(a: string, b: string): HostCheck {
  let other = Number.NaN
  return {
    name: `${a} == ${b}`,
    get want() {
      return `${other}`
    },
    got: (c) => {
      other = c.device[b] ?? Number.NaN
      return c.device[a] ?? Number.NaN
    },
    ok: (v) => typeof v === 'number' && Number.isFinite(v) && v === other,
  }
}

/**
 * Traffic: the guest (guest/scenarios/iavf-ping.sh) pings 198.18.0.2
 * {@link PING_COUNT} times through emu_iavf0, whose data path hands its
 * frames to emu_iavf1, where the TypeScript responder answers ARP and the
 * echo requests through IavfPort; the guest also sends UDP (traceroute) and
 * TCP (nc) to closed ports, whose checksums it leaves to the device, and gets
 * port unreachables and a reset. Then the guest's interface counters (from
 * emu_iavf0's GET_STATS), emu_iavf0's and emu_iavf1's data-path counters,
 * the client's GET_STATS and the responder's counts must agree exactly;
 * the guest sends nothing but ARP, the pings, the probes and the SYNs (IPv6
 * is off), and each of its frames gets exactly one answer.
 */
function iavfPingScenario(queues = 1, doorbellPages = false): Scenario {
  const id = 'iavf0'
  const rig = iavfPingRig(id, queues, doorbellPages)
  const stat = (name: string) => (c: Counters) => c.device[name] ?? Number.NaN
  const zero = (name: string) => exactly(name, 0, stat(name))
  return {
    name: `iavf-ping${queues === 1 ? '' : queues}${doorbellPages ? '-db' : ''}`,
    script: 'iavf-ping',
    // One vCPU: with one vCPU per queue pair, replies sometimes wait seconds in the guest (the
    // open bug in ARCHITECTURE.md, "Known bug"); iavf4 still probes 4 pairs on 4 vCPUs.
    cpus: 1,
    description:
      `Linux iavf on emu_iavf0 (${queues} queue pair${queues === 1 ? '' : 's'}, back-end pair:emu_iavf1, mac=${IAVF_MAC}` +
      `${doorbellPages ? ', tails on doorbell pages QEMU maps into the guest' : ''}):` +
      ` ping -c ${PING_COUNT} ${PING_PEER_IP}, traceroute (UDP), nc to a closed port` +
      `${queues === 1 ? ` and ${TCP_BULK_BYTES} bytes over TCP (TSO)` : ''}` +
      ` answered by the TypeScript responder (src/responder.ts) on emu_iavf1 through IavfPort; counters agree`,
    modules: ['iavf'],
    devices: [rig.device],
    guest: [
      decimal('found', 1),
      decimal('bound', 1),
      equals('mac', IAVF_MAC_HEX),
      decimal('carrier', 1),
      decimal('ping_rc', 0),
      decimal('ping_transmitted', PING_COUNT),
      decimal('ping_received', PING_COUNT),
      decimal('ping_distinct_seqs', PING_COUNT),
      decimal('ping_duplicates', 0),
      // UDP and TCP with the checksums the guest left to the device: answered
      decimal('traceroute_rc', 0),
      decimal('traceroute_answers', 3),
      decimal('tcp_refused', 1),
      // the 1 MiB transfer runs with one queue pair only (iavf-ping.sh says why)
      ...(queues === 1 ? [decimal('tcp_bulk_rc', 0)] : []),
      // ATF_COM: the responder's ARP reply completed the entry, with the peer VF's MAC
      equals('neigh_flags', 0x2),
      equals('neigh_mac', IAVF_PEER_MAC_HEX),
      { name: 'stats_rounds', want: '< 8 (counters settled)', ok: (v) => v < 8 },
      // iavf's counters are emu_iavf0's GET_STATS: they must be its data path's, and hold the
      // pings and at least one ARP request (and its reply) besides
      guestSameAs('tx_packets', rig.last, 'dpTxPackets', PING_COUNT),
      guestSameAs('rx_packets', rig.last, 'dpRxPackets', PING_COUNT),
      guestSameAs('tx_bytes', rig.last, 'dpTxBytes'),
      guestSameAs('rx_bytes', rig.last, 'dpRxBytes'),
      decimal('tx_errors', 0),
      decimal('rx_errors', 0),
      decimal('tx_dropped', 0),
      decimal('rx_dropped', 0),
      decimal('tx_timeouts', 0),
      decimal('dmesg_errors', 0),
      decimal('kernel_warnings', 0),
    ],
    host: {
      [id]: [
        ...serverChecks(),
        atLeast('vcOk', 1, iavfStat('vcOk')),
        ...['vcErrors', 'aqErrors', 'irqsUndelivered', 'arqDropped', 'badAccesses', 'emuErrors'].map(zero),
        // the data paths lost nothing and saw no bad descriptor
        ...['dpTxErrors', 'dpRxErrors', 'dpRxDrops', 'peerDpTxErrors', 'peerDpRxErrors', 'peerDpRxDrops'].map(zero),
        // the peer VF: one client (IavfPort), no errors
        exactly('peerClients', 1, stat('peerClients')),
        ...['peerServerErrors', 'peerVcErrors', 'peerAqErrors', 'peerBadAccesses', 'peerEmuErrors', 'portErrors'].map(zero),
        // the pair: what one VF sent is what the other delivered, both ways
        sameAs('dpTxPackets', 'peerDpRxPackets'),
        sameAs('dpTxBytes', 'peerDpRxBytes'),
        sameAs('peerDpTxPackets', 'dpRxPackets'),
        sameAs('peerDpTxBytes', 'dpRxBytes'),
        // the responder got every frame delivered to the peer's RX ring, and sent every frame its TX ring took
        sameAs('respReceived', 'peerDpRxPackets'),
        sameAs('respReceivedBytes', 'peerDpRxBytes'),
        sameAs('respSent', 'peerDpTxPackets'),
        sameAs('respSentBytes', 'peerDpTxBytes'),
        // the client's GET_STATS of the peer VF agree with its data path
        sameAs('clientRxPackets', 'peerDpRxPackets'),
        sameAs('clientRxBytes', 'peerDpRxBytes'),
        sameAs('clientTxPackets', 'peerDpTxPackets'),
        sameAs('clientTxBytes', 'peerDpTxBytes'),
        sameAs('clientRxBroadcast', 'respReceivedBroadcast'),
        ...['clientRxDiscards', 'clientTxDiscards', 'clientTxErrors'].map(zero),
        // every ping answered once; ARP answered; nothing else from the guest, nothing dropped
        exactly('respEchoRequests', PING_COUNT, stat('respEchoRequests')),
        exactly('respEchoReplies', PING_COUNT, stat('respEchoReplies')),
        atLeast('respArpRequests', 1, stat('respArpRequests')),
        sameAs('respArpReplies', 'respArpRequests'),
        // traceroute's probes and nc's SYN, checksums completed by the device (a bad one is ignored)
        atLeast('respUdpDatagrams', 3, stat('respUdpDatagrams')),
        sameAs('respUnreachableReplies', 'respUdpDatagrams'),
        atLeast('respTcpResets', 1, stat('respTcpResets')),
        // 1 MiB over TCP to the discard port (one queue pair): the guest's TSO packets cut by
        // emu_iavf0's TX engine, every segment's checksums completed, every byte in order, the
        // close answered
        ...(queues === 1
          ? [
              exactly('respTcpBytes', TCP_BULK_BYTES, stat('respTcpBytes')),
              atLeast('dpTxTso', 1, stat('dpTxTso')),
              exactly('respTcpConnections', 1, stat('respTcpConnections')),
              exactly('respTcpClosed', 1, stat('respTcpClosed')),
            ]
          : []),
        atLeast('dpTxOffloaded', 1, stat('dpTxOffloaded')),
        ...['respIgnored', 'respSendDropped', 'respLoopErrors'].map(zero),
        exactly('respStopped', 1, stat('respStopped')),
      ],
    },
  }
}

/**
 * The TypeScript GPIO card (examples/gpio.ts) with its inputs held at
 * `inputs` (no pulse generator) and the outputs in `loopback` wired to the
 * same-numbered inputs. Its counters, the handler counters of its
 * `PciDevice`, and what the guest did to the outputs: the final value, the
 * OR of every value they took (which pins were ever driven high) and how
 * many single-pin changes the history holds.
 */
function gpioDevice(id: string, inputs: number, loopback: number): DeviceUnderTest {
  return {
    id,
    async start(hostPath) {
      const device = new GpioDevice({ periodMs: 0, inputs, loopback, name: id })
      await device.listen(hostPath)
      return {
        stats: () => {
          const { clients, messages, errors, dmaRequests, connected } = device.stats()
          return { clients, messages, errors, dmaRequests, connected }
        },
        deviceStats: (): Record<string, number> => {
          const { handlerCalls, handlerErrors, handlerTimeouts } = device.stats()
          let everHigh = 0
          let edges = 0
          let previous = 0
          for (const v of device.outputHistory) {
            everHigh |= v
            for (let x = (v ^ previous) & 0xffff; x !== 0; x &= x - 1) edges++
            previous = v
          }
          return {
            ...device.counters,
            handlerCalls,
            handlerErrors,
            handlerTimeouts,
            outputs: device.outputs,
            outputsEverHigh: everHigh,
            outputEdges: edges,
          }
        },
        close: () => device.close(),
      }
    },
  }
}

const gpioStat = (name: string) => (c: Counters) => c.device[name] ?? Number.NaN

/** The edu device written in TypeScript (examples/edu.ts), with its model's and handlers' counters. */
function eduTsDevice(id: string): DeviceUnderTest {
  return {
    id,
    async start(hostPath) {
      const device = new EduDevice(id)
      await device.listen(hostPath)
      return {
        stats: () => {
          const { clients, messages, errors, dmaRequests, connected } = device.stats()
          return { clients, messages, errors, dmaRequests, connected }
        },
        deviceStats: (): Record<string, number> => {
          const { handlerCalls, handlerErrors, handlerTimeouts } = device.stats()
          return { ...device.model.stats, handlerCalls, handlerErrors, handlerTimeouts }
        },
        close: () => device.close(),
      }
    },
  }
}

/** The guest side of both edu scenarios (guest/scenarios/edu.sh). */
const EDU_GUEST: readonly GuestExpectation[] = [
  equals('found', 1),
  equals('enabled', 1),
  equals('bar0_size', 0x100000),
  equals('id', 0x010000ed),
  equals('liveness', 0xedcba987),
  { name: 'factorial_polls', want: '< 100', ok: (v) => v < 100 },
  equals('factorial', 3628800),
  equals('irq_status', 0x1),
  equals('irq_status_acked', 0x0),
]

/** The device side of both edu scenarios. */
function eduHostChecks(): HostCheck[] {
  return [
    ...serverChecks(),
    // id, liveness, status (>= 1 poll), factorial, irq status twice
    atLeast('mmioReads', 6, dev('mmioReads')),
    // liveness, factorial, raise, ack
    atLeast('mmioWrites', 4, dev('mmioWrites')),
    atLeast('irqsRaised', 1, dev('irqsRaised')),
    exactly('badAccesses', 0, dev('badAccesses')),
  ]
}
/** The input pattern the gpio scenario's card presents (IIN15..IIN0). */
const GPIO_INPUTS = 0xa5c3

const SCENARIOS: readonly Scenario[] = [
  {
    name: 'edu',
    description: 'native edu device (1234:11e8) driven through BAR0 with devmem',
    modules: [],
    devices: [eduDevice('edu0')],
    guest: EDU_GUEST,
    host: { edu0: eduHostChecks() },
  },
  {
    name: 'edu-ts',
    description: 'the edu device written in TypeScript (examples/edu.ts, 1234:11e8) driven through BAR0 with devmem',
    script: 'edu',
    modules: [],
    devices: [eduTsDevice('edu0')],
    guest: EDU_GUEST,
    host: {
      edu0: [
        ...eduHostChecks(),
        exactly('handlerErrors', 0, gpioStat('handlerErrors')),
        exactly('handlerTimeouts', 0, gpioStat('handlerTimeouts')),
      ],
    },
  },
  {
    name: 'gpio',
    description:
      'Linux gpio-pci-idio-16 on the TypeScript GPIO card (494f:0dc8, examples/gpio.ts) through GPIO sysfs',
    modules: ['gpio-pci-idio-16'],
    devices: [gpioDevice('gpio0', GPIO_INPUTS, 0x8000)],
    guest: [
      decimal('found', 1),
      decimal('bar2_io', 1),
      equals('bar2_size', 0x100),
      decimal('bound', 1),
      decimal('ngpio', 32),
      decimal('out3_is_output', 1),
      decimal('out3_high', 1),
      decimal('out3_low', 0),
      decimal('out9_high', 1),
      decimal('input_lines', 16),
      equals('inputs', GPIO_INPUTS),
      decimal('input_write_refused', 1),
      // OUT15 drives IIN15 (0xa5c3 has IIN15 high): high XOR high, then back
      decimal('in15_after_out15_high', 0),
      decimal('in15_after_out15_low', 1),
      decimal('edge_irqs', 2),
      decimal('dmesg_errors', 0),
      decimal('kernel_warnings', 0),
    ],
    host: {
      gpio0: [
        ...serverChecks(),
        // OUT3 up and down, OUT9 up, OUT15 up and down: five pin changes, nothing else ever driven
        exactly('outputs', 0x0200, gpioStat('outputs')),
        exactly('outputsEverHigh', 0x8208, gpioStat('outputsEverHigh')),
        exactly('outputEdges', 5, gpioStat('outputEdges')),
        // one read per input line at least
        atLeast('inputReads', 16, gpioStat('inputReads')),
        // the probe deactivates the input filters and disables the interrupt
        atLeast('filterWrites', 1, gpioStat('filterWrites')),
        atLeast('irqDisables', 1, gpioStat('irqDisables')),
        // IIN15's edge interrupt: enabled once, raised and cleared per OUT15 toggle
        atLeast('irqEnables', 1, gpioStat('irqEnables')),
        exactly('irqsRaised', 2, gpioStat('irqsRaised')),
        atLeast('irqClears', 2, gpioStat('irqClears')),
        exactly('holeAccesses', 0, gpioStat('holeAccesses')),
        atLeast('handlerCalls', 20, gpioStat('handlerCalls')),
        exactly('handlerErrors', 0, gpioStat('handlerErrors')),
        exactly('handlerTimeouts', 0, gpioStat('handlerTimeouts')),
      ],
    },
  },
  iavfScenario('iavf', 1),
  iavfScenario('iavf4', 4),
  // QEMU maps the sparse doorbell pages of BAR0 into the guest: the driver's tail stores reach
  // the device's memory without a message.
  iavfScenario('iavf-db', 1, true),
  // Traffic: the guest pings a TypeScript responder on a peer VF through the software data path.
  iavfPingScenario(),
  // The same with 4 queue pairs and 4 guest CPUs: Linux spreads its TX over the queues (the
  // peer has one; the pair folds them onto it).
  iavfPingScenario(4),
  // The same with the tails on doorbell pages: the guest driver's tail stores land in the
  // device's memory (no message) and the data path's worker polls them.
  iavfPingScenario(1, true),
]

// ---------------------------------------------------------------------------
// Cleanup on every way out


/**
 * Synchronous undo actions for what is live right now (a QEMU pid, a build
 * process group, sockets, the lock). The normal path removes each one after
 * undoing it; a signal or an unexpected exit runs whatever is left.
 */
const live = new Map<string, () => void>()

function runLiveCleanups(): void {
  for (const [key, undo] of [...live.entries()].reverse()) {
    live.delete(key)
    try {
      undo()
    } catch {
      // best effort: keep undoing the rest
    }
  }
  try {
    unmountUnder(CH)
  } catch {
    // best effort
  }
}

function installSignalHandlers(): void {
  const onSignal = (signal: NodeJS.Signals, code: number) => () => {
    process.stderr.write(`\nharness: ${signal}: killing QEMU, removing sockets, undoing mounts\n`)
    runLiveCleanups()
    process.exit(code)
  }
  process.on('SIGINT', onSignal('SIGINT', 130))
  process.on('SIGTERM', onSignal('SIGTERM', 143))
  process.on('SIGHUP', onSignal('SIGHUP', 129))
  process.on('exit', runLiveCleanups)
}

/** Kills `pid` (ours) if it is still alive. */
function killPid(pid: number | undefined, signal: NodeJS.Signals): void {
  if (pid === undefined) return
  try {
    process.kill(pid, signal)
  } catch {
    // already gone
  }
}

/** Mount points at or under `dir`, deepest first (from /proc/self/mountinfo). */
function mountsUnder(dir: string): string[] {
  let info: string
  try {
    info = readFileSync('/proc/self/mountinfo', 'utf8')
  } catch {
    return []
  }
  const unescape = (s: string) => s.replace(/\\([0-7]{3})/g, (_m, o: string) => String.fromCharCode(parseInt(o, 8)))
  const points = info
    .split('\n')
    .map((line) => line.split(' ')[4])
    .filter((p): p is string => p !== undefined)
    .map(unescape)
    .filter((p) => p === dir || p.startsWith(`${dir}/`))
  return [...new Set(points)].sort((a, b) => b.length - a.length)
}

/** Undoes every mount under `dir`; throws if one stays. */
function unmountUnder(dir: string): void {
  for (let round = 0; round < 3; round++) {
    const points = mountsUnder(dir)
    if (points.length === 0) return
    for (const p of points) {
      const r = spawnSync('umount', ['-R', p], { stdio: 'ignore' })
      if (r.status !== 0) spawnSync('umount', ['-R', '-l', p], { stdio: 'ignore' })
    }
  }
  const left = mountsUnder(dir)
  if (left.length > 0) throw new HarnessError(`still mounted under ${dir}: ${left.join(', ')}`)
}

/** One harness at a time per cache: a lock file holding our pid. */
function takeLock(): void {
  mkdirSync(CACHE, { recursive: true })
  const lock = join(CACHE, 'lock')
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      const fd = openSync(lock, 'wx')
      writeSync(fd, `${process.pid}\n`)
      closeSync(fd)
      live.set('lock', () => rmSync(lock, { force: true }))
      return
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err
      const pid = Number.parseInt(readFileSync(lock, 'utf8'), 10)
      if (Number.isInteger(pid) && pid > 0 && pidAlive(pid)) {
        throw new HarnessError(`another harness (pid ${pid}) is using ${CACHE}`)
      }
      rmSync(lock, { force: true })
    }
  }
  throw new HarnessError(`cannot take ${lock}`)
}

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0)
    return true
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM'
  }
}

// ---------------------------------------------------------------------------
// The cache: chroot and initramfs

function stampText(): string {
  const script = createHash('sha256').update(readFileSync(join(GUEST_SRC, 'build-chroot.sh'))).digest('hex')
  return `${JSON.stringify({ version: CACHE_VERSION, buildScript: script })}\n`
}

/** Runs `cmd`, echoing its output with a prefix; kills its process group after `limitMs`. */
function runLogged(cmd: string, args: string[], env: NodeJS.ProcessEnv, limitMs: number, prefix: string): Promise<void> {
  return new Promise((resolvePromise, reject) => {
    const child = spawn(cmd, args, { env, stdio: ['ignore', 'pipe', 'pipe'], detached: true })
    const key = `proc:${child.pid ?? 'none'}`
    // negative pid: the whole process group of our own child
    live.set(key, () => killPid(child.pid === undefined ? undefined : -child.pid, 'SIGKILL'))
    const tail: string[] = []
    const echo = (chunk: Buffer) => {
      for (const line of chunk.toString('utf8').split('\n')) {
        if (line === '') continue
        process.stdout.write(`${prefix}${line}\n`)
        tail.push(line)
        if (tail.length > 40) tail.shift()
      }
    }
    child.stdout.on('data', echo)
    child.stderr.on('data', echo)
    const timer = setTimeout(() => {
      killPid(child.pid === undefined ? undefined : -child.pid, 'SIGTERM')
      setTimeout(() => killPid(child.pid === undefined ? undefined : -child.pid, 'SIGKILL'), 5000).unref()
    }, limitMs)
    child.on('error', (err) => {
      clearTimeout(timer)
      live.delete(key)
      reject(err)
    })
    child.on('close', (code, signal) => {
      clearTimeout(timer)
      live.delete(key)
      if (code === 0) resolvePromise()
      else reject(new HarnessError(`${cmd} ${args.join(' ')} failed (${signal ?? `exit ${code}`})`))
    })
  })
}

/** Deletes the chroot, after making sure nothing under it is mounted. */
function wipeChroot(): void {
  unmountUnder(CH)
  rmSync(CHROOT_STAMP, { force: true })
  const r = spawnSync('rm', ['-rf', '--one-file-system', CH], { stdio: 'inherit' })
  if (r.status !== 0) throw new HarnessError(`cannot remove ${CH}`)
}

function ensureDebootstrap(): void {
  if (spawnSync('sh', ['-c', 'command -v debootstrap'], { stdio: 'ignore' }).status === 0) return
  console.log('  cache     installing debootstrap on the host (apt-get update; apt-get install debootstrap)')
  // A fresh machine may have no package lists yet; a failed update is reported by the install.
  spawnSync('apt-get', ['update', '-q'], { stdio: ['ignore', 'ignore', 'inherit'], timeout: 5 * 60_000 })
  const r = spawnSync('apt-get', ['install', '-y', '-q', '--no-install-recommends', 'debootstrap'], {
    stdio: ['ignore', 'ignore', 'inherit'],
    env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive' },
    timeout: 5 * 60_000,
  })
  if (r.status !== 0) throw new HarnessError('debootstrap is missing and apt-get could not install it')
}

/** Builds the chroot unless the stamp says it is current. Returns the build time in ms, or null if reused. */
async function ensureChroot(force: boolean): Promise<number | null> {
  const current = existsSync(CHROOT_STAMP) ? readFileSync(CHROOT_STAMP, 'utf8') : ''
  if (!force && current === stampText() && existsSync(join(CH, 'usr', 'bin', 'qemu-system-x86_64'))) return null
  const t0 = Date.now()
  const why = force ? '--rebuild' : current === '' ? 'no cache' : 'cache version changed'
  const mirrors = findMirrors()
  console.log(`  cache     building ${CH} (${why}); mirror ${mirrors.mirror} (from ${mirrors.source})`)
  wipeChroot()
  ensureDebootstrap()
  mkdirSync(CACHE, { recursive: true })
  try {
    await runLogged(
      'bash',
      [join(GUEST_SRC, 'build-chroot.sh')],
      { ...process.env, CH, MIRROR: mirrors.mirror, SECURITY_MIRROR: mirrors.security },
      BUILD_LIMIT_MS,
      '            ',
    )
  } finally {
    unmountUnder(CH)
  }
  writeFileSync(CHROOT_STAMP, stampText())
  return Date.now() - t0
}

/** The kernel version the chroot holds (the newest with both a vmlinuz and modules). */
function kernelVersion(): string {
  const versions = readdirSync(join(CH, 'lib', 'modules'))
    .filter((v) => existsSync(join(CH, 'boot', `vmlinuz-${v}`)))
    .sort((a, b) => a.localeCompare(b, 'en', { numeric: true }))
  const newest = versions[versions.length - 1]
  if (newest === undefined) throw new HarnessError(`no kernel in ${CH}/boot`)
  return newest
}

/** The files staged into the chroot for mkinitramfs: [path relative to guest/, content]. */
function initramfsInputs(): [string, Buffer][] {
  const files: [string, Buffer][] = ['init.sh', 'lib.sh', 'mkinitramfs.sh'].map((f) => [
    f,
    readFileSync(join(GUEST_SRC, f)),
  ])
  for (const f of readdirSync(join(GUEST_SRC, 'scenarios')).sort()) {
    if (f.endsWith('.sh')) files.push([`scenarios/${f}`, readFileSync(join(GUEST_SRC, 'scenarios', f))])
  }
  return files
}

/** Rebuilds the initramfs when its inputs changed. Returns the build time in ms, or null if reused. */
function ensureInitramfs(kver: string, modules: readonly string[]): number | null {
  const inputs = initramfsInputs()
  const hash = createHash('sha256')
  hash.update(`${CACHE_VERSION}\0${kver}\0${[...modules].sort().join(',')}\0`)
  for (const [name, content] of inputs) hash.update(`${name}\0${content.length}\0`).update(content)
  const digest = `${hash.digest('hex')}\n`
  const guestDir = join(CH, GUEST_DIR_INSIDE)
  const stamp = join(guestDir, 'initrd.stamp')
  const initrd = join(CH, INITRD_INSIDE)
  if (existsSync(initrd) && existsSync(stamp) && readFileSync(stamp, 'utf8') === digest) return null
  const t0 = Date.now()
  const src = join(guestDir, 'src')
  rmSync(src, { recursive: true, force: true })
  mkdirSync(join(src, 'scenarios'), { recursive: true })
  for (const [name, content] of inputs) writeFileSync(join(src, name), content)
  const r = spawnSync(
    'chroot',
    [CH, '/bin/sh', `${GUEST_DIR_INSIDE}/src/mkinitramfs.sh`, kver, INITRD_INSIDE, ...modules],
    { encoding: 'utf8', timeout: 120_000 },
  )
  if (r.status !== 0) {
    throw new HarnessError(`mkinitramfs failed (${r.signal ?? `exit ${r.status}`}):\n${r.stdout}${r.stderr}`)
  }
  process.stdout.write(`            ${r.stdout.trim()}\n`)
  writeFileSync(stamp, digest)
  return Date.now() - t0
}

function qemuVersion(): string {
  const r = spawnSync('chroot', [CH, 'qemu-system-x86_64', '--version'], { encoding: 'utf8', timeout: 30_000 })
  return r.status === 0 ? (r.stdout.split('\n')[0] ?? '').replace(/^QEMU emulator version /, '') : 'unknown'
}

// ---------------------------------------------------------------------------
// One boot

interface GuestLine {
  readonly atMs: number
  readonly kind: string
  readonly rest: string
}

interface BootResult {
  readonly exitCode: number | null
  readonly signal: NodeJS.Signals | null
  readonly timedOut: boolean
  readonly wallMs: number
  readonly console: string[]
  /** QEMU's stderr without its trace lines. */
  readonly stderr: string[]
  readonly emudev: GuestLine[]
  readonly trace: QemuTrace
}

function qemuArgs(scenario: Scenario, kver: string, verbose: boolean): string[] {
  const args = [
    'qemu-system-x86_64',
    '-machine', 'q35',
    '-accel', 'tcg',
    '-m', String(GUEST_MEMORY_MB),
    '-smp', String(scenario.cpus ?? 1),
    '-object', `memory-backend-memfd,id=mem,size=${GUEST_MEMORY_MB}M,share=on`,
    '-machine', 'memory-backend=mem',
    '-nodefaults', '-no-user-config',
    '-display', 'none',
    '-serial', 'stdio',
    '-monitor', 'none',
    '-nic', 'none',
    '-no-reboot',
    // QEMU's vfio-user trace events on stderr: what it sent us (see QemuTrace).
    '-trace', 'vfio_user_*',
    '-kernel', `/boot/vmlinuz-${kver}`,
    '-initrd', INITRD_INSIDE,
    // loglevel=1: with several guest CPUs a kernel message printed to the console can land in
    // the middle of a scenario's EMUDEV-CHECK line and garble it; scenarios read dmesg instead.
    '-append', `console=ttyS0 panic=-1${verbose ? '' : ' quiet loglevel=1'} emudev.scenario=${scenario.script ?? scenario.name}`,
  ]
  for (const d of scenario.devices) {
    args.push(
      '-device',
      JSON.stringify({ driver: 'vfio-user-pci', id: d.id, socket: { type: 'unix', path: `${SOCK_DIR_INSIDE}/${d.id}.sock` } }),
    )
  }
  return args
}

/** Boots the guest once; resolves when QEMU exits or was killed at the time limit. */
function boot(scenario: Scenario, kver: string, verbose: boolean): Promise<BootResult> {
  return new Promise((resolvePromise, reject) => {
    const t0 = Date.now()
    const consoleLines: string[] = []
    const stderrLines: string[] = []
    const emudev: GuestLine[] = []
    const trace = new QemuTrace()
    let timedOut = false
    // chroot(8) execs QEMU, so this pid is QEMU's.
    const child: ChildProcess = spawn('chroot', [CH, ...qemuArgs(scenario, kver, verbose)], {
      stdio: ['ignore', 'pipe', 'pipe'],
    })
    const key = `qemu:${child.pid ?? 'none'}`
    live.set(key, () => killPid(child.pid, 'SIGKILL'))
    const lineReader = (onLine: (line: string) => void) => {
      let partial = ''
      return (chunk: Buffer) => {
        const parts = (partial + chunk.toString('utf8')).split('\n')
        partial = parts.pop() ?? ''
        for (const raw of parts) onLine(raw.replace(/\r/g, ''))
      }
    }
    const keep = (sink: string[], line: string) => {
      sink.push(line)
      if (sink.length > 5000) sink.shift()
    }
    child.stdout?.on(
      'data',
      lineReader((line) => {
        keep(consoleLines, line)
        if (verbose) process.stdout.write(`    | ${line}\n`)
        const m = /^(EMUDEV-[A-Z]+)\s?(.*)$/.exec(line)
        if (m?.[1] !== undefined) emudev.push({ atMs: Date.now() - t0, kind: m[1], rest: m[2] ?? '' })
      }),
    )
    child.stderr?.on(
      'data',
      lineReader((line) => {
        if (verbose) process.stdout.write(`    ! ${line}\n`)
        if (!trace.feed(line)) keep(stderrLines, line)
      }),
    )
    const limit = setTimeout(() => {
      timedOut = true
      killPid(child.pid, 'SIGTERM')
      setTimeout(() => killPid(child.pid, 'SIGKILL'), 3000).unref()
    }, SCENARIO_LIMIT_MS)
    child.on('error', (err) => {
      clearTimeout(limit)
      live.delete(key)
      reject(err)
    })
    child.on('close', (exitCode, signal) => {
      clearTimeout(limit)
      live.delete(key)
      resolvePromise({
        exitCode,
        signal,
        timedOut,
        wallMs: Date.now() - t0,
        console: consoleLines,
        stderr: stderrLines,
        emudev,
        trace,
      })
    })
  })
}

// ---------------------------------------------------------------------------
// Running and judging a scenario

interface Row {
  readonly what: string
  readonly got: string
  readonly want: string
  readonly ok: boolean
}

interface ScenarioResult {
  readonly name: string
  readonly passed: boolean
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms))
const fmtS = (ms: number) => `${(ms / 1000).toFixed(1)} s`

async function runScenario(scenario: Scenario, kver: string, verbose: boolean): Promise<ScenarioResult> {
  console.log(
    `\nscenario ${scenario.name}: ${scenario.description}` +
      ` (${scenario.devices.length} device(s), ${scenario.cpus ?? 1} CPU(s), limit ${fmtS(SCENARIO_LIMIT_MS)})`,
  )
  const sockDir = join(CH, SOCK_DIR_INSIDE)
  mkdirSync(sockDir, { recursive: true })
  const servers = new Map<string, RunningServer>()
  const counters = new Map<string, Counters>()
  const problems: string[] = []
  let result: BootResult | undefined
  try {
    for (const d of scenario.devices) {
      const hostPath = join(sockDir, `${d.id}.sock`)
      live.set(`sock:${d.id}`, () => rmSync(hostPath, { force: true }))
      servers.set(d.id, await d.start(hostPath))
    }
    result = await boot(scenario, kver, verbose)
    // Let each server notice that QEMU hung up, then read its counters.
    for (const [id, server] of servers) {
      const deadline = Date.now() + DISCONNECT_WAIT_MS
      while (server.stats().connected && Date.now() < deadline) await sleep(20)
      counters.set(id, { server: server.stats(), device: server.deviceStats() })
    }
  } catch (err) {
    problems.push(`harness: ${err instanceof Error ? err.message : String(err)}`)
  } finally {
    for (const [id, server] of servers) {
      try {
        await server.close()
      } catch (err) {
        problems.push(`closing ${id}: ${err instanceof Error ? err.message : String(err)}`)
      }
    }
    for (const d of scenario.devices) {
      rmSync(join(sockDir, `${d.id}.sock`), { force: true })
      live.delete(`sock:${d.id}`)
    }
  }

  const rows: Row[] = []
  if (result !== undefined) {
    const begin = result.emudev.find((l) => l.kind === 'EMUDEV-BEGIN')
    const end = result.emudev.find((l) => l.kind === 'EMUDEV-END')
    const field = (line: GuestLine | undefined, key: string) =>
      line === undefined ? undefined : new RegExp(`(?:^|\\s)${key}=(\\S+)`).exec(line.rest)?.[1]
    const how = result.timedOut
      ? `killed at the time limit`
      : result.signal !== null
        ? `killed by ${result.signal}`
        : `exit ${result.exitCode}`
    console.log(
      `  boot      /init after ${begin === undefined ? '(never)' : fmtS(begin.atMs)} wall` +
        ` (guest uptime ${field(begin, 'uptime') ?? '?'} s, kernel ${field(begin, 'kernel') ?? '?'});` +
        ` scenario ${begin !== undefined && end !== undefined ? fmtS(end.atMs - begin.atMs) : '?'};` +
        ` QEMU ${how} after ${fmtS(result.wallMs)}`,
    )
    rows.push({ what: 'QEMU', got: how, want: 'exit 0', ok: !result.timedOut && result.exitCode === 0 })
    rows.push({ what: 'guest /init ran', got: begin === undefined ? 'no' : 'yes', want: 'yes', ok: begin !== undefined })
    rows.push({
      what: 'guest scenario rc',
      got: field(end, 'rc') ?? '(no EMUDEV-END)',
      want: '0',
      ok: field(end, 'rc') === '0',
    })
    for (const l of result.emudev) {
      if (l.kind === 'EMUDEV-INFO') console.log(`  info      ${l.rest}`)
      if (l.kind === 'EMUDEV-FAIL') rows.push({ what: 'guest FAIL', got: l.rest, want: '(none)', ok: false })
    }
    const checks = new Map<string, string>()
    for (const l of result.emudev) {
      if (l.kind !== 'EMUDEV-CHECK') continue
      const eq = l.rest.indexOf('=')
      if (eq > 0) checks.set(l.rest.slice(0, eq), l.rest.slice(eq + 1))
    }
    // A guest that never reached /init measured nothing: one row says so.
    for (const e of begin === undefined ? [] : scenario.guest) {
      const raw = checks.get(e.name)
      const value = raw === undefined || raw.trim() === '' ? Number.NaN : Number(raw.trim())
      rows.push({ what: `guest ${e.name}`, got: raw ?? '(missing)', want: e.want, ok: Number.isFinite(value) && e.ok(value) })
    }
    for (const [name, raw] of checks) {
      if (!scenario.guest.some((e) => e.name === name)) console.log(`  info      ${name}=${raw} (not checked)`)
    }
  }
  for (const d of scenario.devices) {
    const c = counters.get(d.id)
    if (c === undefined) {
      rows.push({ what: `${d.id} counters`, got: '(none)', want: 'read after the run', ok: false })
      continue
    }
    for (const h of scenario.host[d.id] ?? []) {
      const v = h.got(c)
      rows.push({ what: `${d.id} ${h.name}`, got: String(v), want: h.want, ok: h.ok(v) })
    }
  }
  if (result !== undefined && counters.size === scenario.devices.length) {
    // Every message QEMU wrote must have been counted by a server, and QEMU saw no error reply.
    const counted = [...counters.values()].reduce((a, c) => a + c.server.messages, 0)
    rows.push({
      what: 'servers counted all QEMU sent',
      got: `${counted} of ${result.trace.sent}`,
      want: `${result.trace.sent}`,
      ok: counted === result.trace.sent && result.trace.sent > 0,
    })
    rows.push({
      what: 'QEMU error replies',
      got: String(result.trace.errorReplies.length),
      want: '0',
      ok: result.trace.errorReplies.length === 0,
    })
  }
  for (const p of problems) rows.push({ what: 'harness', got: p, want: '(no error)', ok: false })

  const width = Math.max(...rows.map((r) => r.what.length))
  for (const r of rows) {
    console.log(`  ${r.ok ? 'ok  ' : 'FAIL'}      ${r.what.padEnd(width)}  ${r.got}${r.ok ? '' : `  (want ${r.want})`}`)
  }
  for (const [id, c] of counters) {
    console.log(`  server    ${id}: ${JSON.stringify(c.server)}`)
    console.log(`  device    ${id}: ${JSON.stringify(c.device)}`)
  }
  const passed = rows.every((r) => r.ok) && rows.length > 0
  if (result !== undefined) {
    for (const line of result.trace.summary()) console.log(`  trace     ${line}`)
    for (const line of result.stderr) {
      if (line.trim() === '') continue
      const note = /Could not enable error recovery/.test(line)
        ? '  [benign: the device reports no ERR IRQ, like a conventional PCI function]'
        : ''
      console.log(`  qemu      ${line}${note}`)
    }
    if (!passed && !verbose) {
      console.log(`  trace     (last 40 vfio-user trace lines)`)
      for (const line of result.trace.last.slice(-40)) console.log(`    ! ${line}`)
      console.log(`  console   (last 60 lines)`)
      for (const line of result.console.slice(-60)) console.log(`    | ${line}`)
    }
  }
  console.log(`${passed ? 'PASS' : 'FAIL'} ${scenario.name}`)
  return { name: scenario.name, passed }
}

// ---------------------------------------------------------------------------
// Main

async function main(argv: string[]): Promise<number> {
  const verbose = argv.includes('--verbose')
  const rebuild = argv.includes('--rebuild')
  const names = argv.filter((a) => !a.startsWith('--'))
  const unknownFlag = argv.find((a) => a.startsWith('--') && a !== '--verbose' && a !== '--rebuild')
  if (unknownFlag !== undefined) throw new HarnessError(`unknown option ${unknownFlag} (have --verbose, --rebuild)`)
  const chosen = names.length === 0 ? SCENARIOS : names.map((n) => {
    const s = SCENARIOS.find((x) => x.name === n)
    if (s === undefined) throw new HarnessError(`no scenario ${n} (have: ${SCENARIOS.map((x) => x.name).join(', ')})`)
    return s
  })
  if (process.platform !== 'linux' || process.arch !== 'x64') throw new HarnessError('needs Linux on x86_64')
  if (process.getuid?.() !== 0) throw new HarnessError('needs root (debootstrap, chroot, mknod)')

  console.log(`emudev real-driver tests (native ${native.nativeVersion()})`)
  installSignalHandlers()
  takeLock()
  unmountUnder(CH) // left over by a run that was killed hard
  const tStart = Date.now()
  const built = await ensureChroot(rebuild)
  const kver = kernelVersion()
  console.log(
    `  cache     ${CH}: ${built === null ? 'reused' : `built in ${fmtS(built)}`} (stamp v${CACHE_VERSION})`,
  )
  const modules = [...new Set(chosen.flatMap((s) => s.modules))]
  const initrd = ensureInitramfs(kver, modules)
  console.log(
    `  initramfs ${initrd === null ? 'reused' : `built in ${fmtS(initrd)}`}` +
      ` (modules: ${modules.length === 0 ? 'none' : modules.join(' ')})`,
  )
  console.log(`  guest     kernel ${kver}, QEMU ${qemuVersion()}, TCG, ${GUEST_MEMORY_MB} MiB memfd RAM`)

  const results: ScenarioResult[] = []
  for (const s of chosen) results.push(await runScenario(s, kver, verbose))
  unmountUnder(CH)

  const failed = results.filter((r) => !r.passed)
  console.log(
    `\n${failed.length === 0 ? 'ok' : 'FAILED'}: ${results.length - failed.length}/${results.length} scenario(s) passed` +
      ` in ${fmtS(Date.now() - tStart)}${failed.length > 0 ? ` (failed: ${failed.map((r) => r.name).join(', ')})` : ''}`,
  )
  return failed.length === 0 ? 0 : 1
}

if (require.main === module) {
  main(process.argv.slice(2))
    .then((code) => {
      runLiveCleanups()
      process.exitCode = code
    })
    .catch((err: unknown) => {
      runLiveCleanups()
      const msg = err instanceof HarnessError || err instanceof MirrorError ? err.message : err instanceof Error ? (err.stack ?? err.message) : String(err)
      process.stderr.write(`harness: ${msg}\n`)
      process.exitCode = 2
    })
}
