/**
 * Serving devices: one native vfio-user server per device string.
 *
 * `serve(parseVdevList(['emu_edu0,sock=/tmp/edu.sock', 'emu_iavf0,sock=/tmp/vf.sock,queues=4']))`
 * starts a {@link NativeServer} for each `emu_edu` and `emu_iavf` device; each
 * runs on its own native thread and none keeps Node alive by itself. The
 * returned handle's `close()` stops them all and removes their sockets.
 *
 * `emu_iavf`'s `backend=` attaches the software data path (`loopback`,
 * `macswap`, `rxonly`, `txonly[:LEN]`, `pair:<peer>`, `pcap:<file>`,
 * `pcap-replay:<file>`, `channel`); `pair:` peers are other devices of the same
 * process, in any order.
 *
 * Drivers that cannot be served (`iavf_client` is a client, not a device) are
 * rejected up front, before any socket is touched, with a {@link ServeError}
 * whose code is {@link DRIVER_UNAVAILABLE_CODE}.
 */
import type { Vdev } from './config'
import { native, isNativeError } from './native'
import type { IavfServerOptions } from '../index.js'

/** The native server class (one `edu` or `emu_iavf` device on one socket). */
export type NativeServer = InstanceType<typeof native.NativeServer>

/** The `code` of a {@link ServeError} for a driver that cannot be served yet. */
export const DRIVER_UNAVAILABLE_CODE = 'ERR_EMUDEV_DRIVER_UNAVAILABLE'

/**
 * A device could not be served. `code` is {@link DRIVER_UNAVAILABLE_CODE} or
 * the native error's code (`ERR_EMUDEV_SOCKET_IN_USE`, `ERR_VFU_EACCES`,
 * `ERR_EMUDEV_INVALID_ARG`, ...), `device` the device name, `cause` the native
 * error if there is one.
 */
export class ServeError extends Error {
  readonly code: string
  readonly device: string

  constructor(message: string, code: string, device: string, cause?: unknown) {
    super(message, cause === undefined ? undefined : { cause })
    this.name = 'ServeError'
    this.code = code
    this.device = device
  }
}

/** A device being served. */
export interface ServedDevice {
  /** The device name (`emu_edu0`, `emu_iavf0`). */
  readonly name: string
  /** The driver (`emu_edu` or `emu_iavf`). */
  readonly driver: 'emu_edu' | 'emu_iavf'
  /** The socket path. */
  readonly path: string
  /** The native server. */
  readonly server: NativeServer
  /** For `emu_iavf`: queue pairs, MAC and MTU as configured (defaults filled in). */
  readonly iavf?: { queues: number; mac: string; mtu: number; backend: string | null }
}

/** What {@link serve} returns. */
export interface ServeHandle {
  /** The devices, in the order they were given. */
  readonly devices: readonly ServedDevice[]
  /** Stops every server and removes its socket. Safe to call more than once. */
  close(): Promise<void>
}

/** Why `dev` cannot be served now, or undefined if it can. */
function unavailable(dev: Vdev): string | undefined {
  if (dev.driver === 'iavf_client') return `${dev.name}: iavf_client is a client driver (use 'emudev client')`
  return undefined
}

function listen(dev: Vdev): ServedDevice {
  switch (dev.driver) {
    case 'emu_edu':
      return { name: dev.name, driver: dev.driver, path: dev.args.sock, server: native.NativeServer.listenEdu(dev.args.sock) }
    case 'emu_iavf': {
      const { sock, queues, mac, mtu, backend, doorbells } = dev.args
      const options: IavfServerOptions = { name: dev.name }
      if (queues !== undefined) options.queues = queues
      if (mac !== undefined) options.mac = mac
      if (mtu !== undefined) options.mtu = mtu
      if (backend !== undefined) options.backend = backend
      if (doorbells !== undefined) options.doorbellPages = doorbells !== 'trap'
      if (doorbells === 'kick') options.doorbellKicks = true
      const server = native.NativeServer.listenIavf(sock, options)
      const state = server.iavfState()
      return {
        name: dev.name,
        driver: dev.driver,
        path: sock,
        server,
        iavf: { queues: state.queuePairs, mac: state.macs[0] ?? '', mtu: mtu ?? 1500, backend: backend ?? null },
      }
    }
    default:
      // Filtered out by `unavailable` before any socket is touched.
      throw new ServeError(`${dev.name} cannot be served`, DRIVER_UNAVAILABLE_CODE, dev.name)
  }
}

/**
 * Starts a server for each device. If one cannot start, those already
 * started are closed again and a {@link ServeError} is thrown.
 */
export async function serve(vdevs: readonly Vdev[]): Promise<ServeHandle> {
  for (const dev of vdevs) {
    const why = unavailable(dev)
    if (why !== undefined) throw new ServeError(why, DRIVER_UNAVAILABLE_CODE, dev.name)
  }
  const devices: ServedDevice[] = []
  const closeAll = async (): Promise<void> => {
    await Promise.all(devices.map((d) => d.server.close()))
  }
  for (const dev of vdevs) {
    try {
      devices.push(listen(dev))
    } catch (err) {
      await closeAll()
      if (isNativeError(err)) throw new ServeError(`${dev.name}: ${err.message}`, err.code, dev.name, err)
      throw err
    }
  }
  return { devices, close: closeAll }
}

/** One line of a device's counters, for logs (`emudev serve` prints it on close). */
export function statsSummary(dev: ServedDevice): string {
  const s = dev.server.stats()
  const base = `${s.clients} client(s), ${s.messages} messages, ${s.errors} errors`
  if (dev.driver === 'emu_iavf') {
    const i = dev.server.iavfStats()
    return (
      `${base}; ${i.mmioReads} MMIO reads, ${i.mmioWrites} writes, ${i.aqCommands} admin commands ` +
      `(${i.aqErrors} faults), virtchnl ${i.vcOk} ok / ${i.vcErrors} refused (${i.vcNotSupported} not supported), ` +
      `${i.linkEvents} link events, ${i.vfResets} VF resets, ${i.irqsRaised} interrupts (${i.irqsUndelivered} undelivered, ${i.irqsDeferred} held by ITR)`
    )
  }
  const e = dev.server.eduStats()
  return `${base}; ${e.mmioReads} MMIO reads, ${e.mmioWrites} writes, ${e.dmaTransfers} DMA transfers, ${e.irqsRaised} interrupts`
}
