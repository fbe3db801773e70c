/**
 * What the interactive shell (`src/shell.ts`) drives: the {@link ShellHost}
 * interface, and {@link ServeShellHost}, which implements it over the servers
 * of `serve()` (a {@link ServeHandle}).
 *
 * The shell never touches native objects itself: everything it shows or
 * changes goes through a host, so it can be tested over a fake one, and a
 * host can refuse what its devices cannot do with a {@link HostError} whose
 * `code` says why.
 *
 * The software data path of an `emu_iavf` device (its back-end: loopback,
 * macswap, rxonly, txonly, pair, pcap, channel), its datapath counters and the
 * pcap capture tap are methods of the iavf `NativeServer`
 * ({@link IavfServerDatapath}). `emu_edu` servers have none of them, and a
 * native addon built before the data path existed neither:
 * {@link ServeShellHost} says which of the two it is. The vfio-user message
 * trace is a method of every server (edu too) in builds that have it; all
 * devices trace into one file, each line labelled with its device.
 */
import type { ServeHandle, ServedDevice } from './server'

/** Why a host refused an operation. */
export type HostErrorCode =
  /** No device of that name. */
  | 'unknown-device'
  /** The device (or the native addon) has no software data path, capture or trace. */
  | 'no-datapath'
  /** A bad back-end spec or file (the message says which part). */
  | 'invalid-arg'
  /** Already attached, capturing or tracing. */
  | 'busy'
  /** No back-end attached (for capture), or nothing to stop. */
  | 'not-attached'
  /** Anything else (the message has the native error's code). */
  | 'failed'

/** An operation the host refused or that failed; `message` is one line meant for the user. */
export class HostError extends Error {
  readonly code: HostErrorCode

  constructor(message: string, code: HostErrorCode, cause?: unknown) {
    super(message, cause === undefined ? undefined : { cause })
    this.name = 'HostError'
    this.code = code
  }
}

/** The emulated iavf VF's side of a {@link ShellDevice}. */
export interface ShellIavfInfo {
  /** Queue pairs configured. */
  queues: number
  /** The default MAC. */
  mac: string
  /** The link state reported to the VF. */
  linkUp: boolean
  /** TX queues the driver enabled. */
  txEnabled: number
  /** RX queues the driver enabled. */
  rxEnabled: number
  /** The virtchnl version the driver negotiated, or null before it did. */
  version: string | null
  /** Capability flags granted to the driver. */
  caps: number
}

/** A served device as the shell shows it. */
export interface ShellDevice {
  /** The device name (`emu_iavf0`). */
  name: string
  /** The driver (`emu_edu`, `emu_iavf`). */
  driver: string
  /** The vfio-user socket. */
  path: string
  /** Clients accepted so far. */
  clients: number
  /** Whether a client is connected now. */
  connected: boolean
  /** vfio-user messages received. */
  messages: number
  /** Requests answered with an error. */
  errors: number
  /** Whether the device has a software data path (back-ends, capture, trace). */
  datapath: boolean
  /** The back-end spec attached now, or null. */
  backend: string | null
  /** For `emu_iavf`: queues, MAC, link and the driver's state. */
  iavf?: ShellIavfInfo
}

/** One queue pair's data path counters. */
export interface QueueStats {
  /** Packets delivered to the driver (its RX). */
  rxPackets: number
  /** Bytes of those packets. */
  rxBytes: number
  /** RX descriptors the device could not complete. */
  rxErrors: number
  /** Frames for RX dropped (no descriptor free, ring full). */
  rxDrops: number
  /** Packets the driver sent (its TX). */
  txPackets: number
  /** Bytes of those packets. */
  txBytes: number
  /** TX descriptors the device could not process. */
  txErrors: number
  /** Of `txPackets`, those sent with checksum or TSO offloads applied (each TSO segment counts). */
  txOffloaded?: number
  /** TSO packets the device cut into segments. */
  txTso?: number
}

/** A port's data path counters: the sum over its queues, and each queue. */
export interface PortStats extends QueueStats {
  /** Per queue pair, by queue index. */
  queues: QueueStats[]
}

/** Where a trace is written. */
export interface TraceTarget {
  /** The device traced. */
  device: string
  /** The file its messages go to (JSON lines). */
  file: string
}

/**
 * Everything the shell needs from the devices it serves. Methods throw (or
 * reject with) a {@link HostError} for what they cannot do.
 */
export interface ShellHost {
  /** The devices, in the order they were given, with their counters now. */
  devices(): ShellDevice[]
  /** Attaches back-end `spec` (`loopback`, `pair:emu_iavf1`, ...) to device `dev`'s data path. */
  attach(dev: string, spec: string): Promise<void>
  /** Detaches `dev`'s back-end; does nothing if none is attached. */
  detach(dev: string): Promise<void>
  /** The back-end spec attached to `dev`, or null. */
  backend(dev: string): string | null
  /** `dev`'s data path counters now. */
  portStats(dev: string): PortStats
  /** Zeroes `dev`'s data path counters. */
  clearStats(dev: string): void
  /** Starts writing every frame `dev` handles (or the first `frames`) to the pcap file `file`. */
  captureStart(dev: string, file: string, frames?: number): void
  /** Stops `dev`'s capture (the file is complete afterwards). */
  captureStop(dev: string): void
  /**
   * Starts appending the decoded vfio-user messages of every device that can
   * trace them to `file`, as JSON lines labelled with the device name;
   * returns where each goes.
   */
  traceStart(file: string): TraceTarget[]
  /** Stops every trace; returns the devices that were traced. */
  traceStop(): string[]
}

/**
 * The data path methods of an iavf `NativeServer`. They are not in the
 * generated typings of every build yet, so {@link ServeShellHost} checks for
 * them at runtime.
 */
export interface IavfServerDatapath {
  /** Attaches a back-end; `ERR_EMUDEV_INVALID_ARG` for a bad spec, `ERR_EMUDEV_BUSY` if one is attached. */
  attachBackend(spec: string): void
  /** Detaches the back-end. */
  detachBackend(): void
  /** The attached spec, or null. */
  backend(): string | null
  /** The data path counters, per queue pair. */
  datapathStats(): { queues: QueueStats[] }
  /** Zeroes the data path counters. */
  clearDatapathStats(): void
  /** Starts the pcap capture tap (every frame, or the first `maxFrames`). */
  captureStart(path: string, maxFrames?: number): void
  /** Stops the pcap capture tap. */
  captureStop(): void
  /** Starts the vfio-user message trace (JSON lines appended to `path`, labelled `label`). */
  traceStart(path: string, label?: string): void
  /** Stops the trace. */
  traceStop(): void
}

/** The trace methods, which every `NativeServer` has (edu too) in builds that can trace. */
export type ServerTracer = Pick<IavfServerDatapath, 'traceStart' | 'traceStop'>

/** A served device's trace methods, if this build of the addon has them. */
export function tracerOf(d: ServedDevice): ServerTracer | undefined {
  const s = d.server as unknown as Partial<Record<keyof ServerTracer, unknown>>
  return typeof s.traceStart === 'function' && typeof s.traceStop === 'function' ? (d.server as unknown as ServerTracer) : undefined
}

/** Whether `server` has every method of {@link IavfServerDatapath}. */
export function hasDatapath(server: unknown): server is IavfServerDatapath {
  const s = server as Partial<Record<keyof IavfServerDatapath, unknown>> | null
  if (typeof s !== 'object' || s === null) return false
  const methods: (keyof IavfServerDatapath)[] = [
    'attachBackend',
    'detachBackend',
    'backend',
    'datapathStats',
    'clearDatapathStats',
    'captureStart',
    'captureStop',
    'traceStart',
    'traceStop',
  ]
  return methods.every((m) => typeof s[m] === 'function')
}

/**
 * The data path methods of a served device: only `emu_iavf` devices have them
 * (edu servers are the same native class, but refuse them), and only with a
 * native addon built with the data path.
 */
export function datapathOf(d: ServedDevice): IavfServerDatapath | undefined {
  return d.driver === 'emu_iavf' && hasDatapath(d.server) ? d.server : undefined
}

/** The sum of `queues`, with the queues themselves. */
export function sumQueues(queues: readonly QueueStats[]): PortStats {
  const total: PortStats = { rxPackets: 0, rxBytes: 0, rxErrors: 0, rxDrops: 0, txPackets: 0, txBytes: 0, txErrors: 0, queues: [] }
  if (queues.some((q) => q.txOffloaded !== undefined || q.txTso !== undefined)) {
    total.txOffloaded = 0
    total.txTso = 0
  }
  for (const q of queues) {
    total.rxPackets += q.rxPackets
    total.rxBytes += q.rxBytes
    total.rxErrors += q.rxErrors
    total.rxDrops += q.rxDrops
    total.txPackets += q.txPackets
    total.txBytes += q.txBytes
    total.txErrors += q.txErrors
    if (total.txOffloaded !== undefined) total.txOffloaded += q.txOffloaded ?? 0
    if (total.txTso !== undefined) total.txTso += q.txTso ?? 0
    total.queues.push({ ...q })
  }
  return total
}

/** The `code` of a thrown value, if it is a string. */
function codeOf(err: unknown): string | undefined {
  const code = (err as { code?: unknown } | null)?.code
  return typeof code === 'string' ? code : undefined
}

/** A native error as a {@link HostError} naming the device. */
function hostError(dev: string, err: unknown): HostError {
  if (err instanceof HostError) return err
  const code = codeOf(err)
  const message = `${dev}: ${(err instanceof Error ? err.message : String(err)).replace(/\s*\n\s*/g, ' ')}`
  switch (code) {
    case 'ERR_EMUDEV_INVALID_ARG':
      return new HostError(message, 'invalid-arg', err)
    case 'ERR_EMUDEV_BUSY':
      return new HostError(message, 'busy', err)
    case 'ERR_EMUDEV_NOT_READY':
      return new HostError(message, 'not-attached', err)
    default:
      return new HostError(code === undefined ? message : `${message} (${code})`, 'failed', err)
  }
}

/** Runs `fn`, turning what it throws into a {@link HostError} for `dev`. */
function guarded<T>(dev: string, fn: () => T): T {
  try {
    return fn()
  } catch (err) {
    throw hostError(dev, err)
  }
}

/** A {@link ShellHost} over the devices `serve()` started. */
export class ServeShellHost implements ShellHost {
  readonly #handle: ServeHandle
  /** Devices traced now. */
  readonly #traced = new Set<string>()

  constructor(handle: ServeHandle) {
    this.#handle = handle
  }

  devices(): ShellDevice[] {
    return this.#handle.devices.map((d) => describeDevice(d))
  }

  async attach(dev: string, spec: string): Promise<void> {
    const dp = this.#datapath(dev)
    guarded(dev, () => dp.attachBackend(spec))
  }

  async detach(dev: string): Promise<void> {
    const dp = this.#datapath(dev)
    guarded(dev, () => {
      if (dp.backend() !== null) dp.detachBackend()
    })
  }

  backend(dev: string): string | null {
    const dp = this.#datapath(dev)
    return guarded(dev, () => dp.backend())
  }

  portStats(dev: string): PortStats {
    const dp = this.#datapath(dev)
    return guarded(dev, () => sumQueues(dp.datapathStats().queues))
  }

  clearStats(dev: string): void {
    const dp = this.#datapath(dev)
    guarded(dev, () => dp.clearDatapathStats())
  }

  captureStart(dev: string, file: string, frames?: number): void {
    const dp = this.#datapath(dev)
    guarded(dev, () => (frames === undefined ? dp.captureStart(file) : dp.captureStart(file, frames)))
  }

  captureStop(dev: string): void {
    const dp = this.#datapath(dev)
    guarded(dev, () => dp.captureStop())
  }

  traceStart(file: string): TraceTarget[] {
    if (this.#traced.size > 0) throw new HostError(`a trace is running (${[...this.#traced].join(', ')}): trace off first`, 'busy')
    const traceable = this.#handle.devices.flatMap((d) => {
      const tracer = tracerOf(d)
      return tracer === undefined ? [] : [{ name: d.name, tracer }]
    })
    if (traceable.length === 0) throw new HostError('this build of the native addon cannot trace vfio-user messages (rebuild it)', 'no-datapath')
    const targets: TraceTarget[] = []
    for (const { name, tracer } of traceable) {
      try {
        guarded(name, () => tracer.traceStart(file, name))
      } catch (err) {
        this.traceStop() // the ones started before this one
        throw err
      }
      this.#traced.add(name)
      targets.push({ device: name, file })
    }
    return targets
  }

  traceStop(): string[] {
    const stopped: string[] = []
    let failure: HostError | undefined
    for (const d of this.#handle.devices) {
      if (!this.#traced.has(d.name)) continue
      this.#traced.delete(d.name)
      stopped.push(d.name)
      const tracer = tracerOf(d)
      if (tracer === undefined) continue
      try {
        guarded(d.name, () => tracer.traceStop())
      } catch (err) {
        failure ??= hostError(d.name, err)
      }
    }
    if (failure !== undefined) throw failure
    return stopped
  }

  /** `dev`, or a {@link HostError} listing the devices there are. */
  #find(dev: string): ServedDevice {
    const found = this.#handle.devices.find((d) => d.name === dev)
    if (found !== undefined) return found
    const names = this.#handle.devices.map((d) => d.name)
    throw new HostError(`no device '${dev}' (devices: ${names.length === 0 ? 'none' : names.join(', ')})`, 'unknown-device')
  }

  /** `dev`'s data path methods, or a {@link HostError} saying why it has none. */
  #datapath(dev: string): IavfServerDatapath {
    const d = this.#find(dev)
    if (d.driver !== 'emu_iavf') {
      throw new HostError(`${dev} is an ${d.driver} device: it has no data path (only emu_iavf devices do)`, 'no-datapath')
    }
    const dp = datapathOf(d)
    if (dp === undefined) throw new HostError(`${dev}: this build of the native addon has no iavf data path (rebuild it)`, 'no-datapath')
    return dp
  }
}

/** A served device's description and counters now. */
function describeDevice(d: ServedDevice): ShellDevice {
  const server = d.server
  const base: ShellDevice = {
    name: d.name,
    driver: d.driver,
    path: d.path,
    clients: 0,
    connected: false,
    messages: 0,
    errors: 0,
    datapath: datapathOf(d) !== undefined,
    backend: null,
  }
  if (server.closed) return base
  const s = server.stats()
  Object.assign(base, { clients: s.clients, connected: s.connected, messages: s.messages, errors: s.errors })
  base.backend = datapathOf(d)?.backend() ?? null
  if (d.driver === 'emu_iavf') {
    const st = server.iavfState()
    base.iavf = {
      queues: st.queuePairs,
      mac: st.macs[0] ?? d.iavf?.mac ?? '',
      linkUp: st.linkUp,
      txEnabled: st.txEnabled,
      rxEnabled: st.rxEnabled,
      version: st.version ?? null,
      caps: st.caps,
    }
  }
  return base
}
