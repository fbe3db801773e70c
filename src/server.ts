/**
 * Serving devices: one native vfio-user server per device string.
 *
 * `serve(parseVdevList(['emu_edu0,sock=/tmp/edu.sock']))` starts a
 * {@link NativeServer} for each `emu_edu` device; each runs on its own native
 * thread and none keeps Node alive by itself. The returned handle's `close()`
 * stops them all and removes their sockets.
 *
 * Only `emu_edu` can be served today. Other drivers are rejected up front,
 * before any socket is touched, with a {@link ServeError} whose code is
 * {@link DRIVER_UNAVAILABLE_CODE}.
 */
import type { Vdev } from './config'
import { native, isNativeError } from './native'

/** The native server class (one `edu` device on one socket). */
export type NativeServer = InstanceType<typeof native.NativeServer>

/** The `code` of a {@link ServeError} for a driver that cannot be served yet. */
export const DRIVER_UNAVAILABLE_CODE = 'ERR_EMUDEV_DRIVER_UNAVAILABLE'

/**
 * A device could not be served. `code` is {@link DRIVER_UNAVAILABLE_CODE} or
 * the native error's code (`ERR_EMUDEV_SOCKET_IN_USE`, `ERR_VFU_EACCES`, ...),
 * `device` the device name, `cause` the native error if there is one.
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
  /** The device name (`emu_edu0`). */
  readonly name: string
  /** The socket path. */
  readonly path: string
  /** The native server. */
  readonly server: NativeServer
}

/** What {@link serve} returns. */
export interface ServeHandle {
  /** The devices, in the order they were given. */
  readonly devices: readonly ServedDevice[]
  /** Stops every server and removes its socket. Safe to call more than once. */
  close(): Promise<void>
}

/**
 * Starts a server for each device. If one cannot start, those already
 * started are closed again and a {@link ServeError} is thrown.
 */
export async function serve(vdevs: readonly Vdev[]): Promise<ServeHandle> {
  for (const dev of vdevs) {
    if (dev.driver !== 'emu_edu') {
      throw new ServeError(`${dev.driver} is not available yet`, DRIVER_UNAVAILABLE_CODE, dev.name)
    }
  }
  const devices: ServedDevice[] = []
  const closeAll = async (): Promise<void> => {
    await Promise.all(devices.map((d) => d.server.close()))
  }
  for (const dev of vdevs) {
    if (dev.driver !== 'emu_edu') continue
    try {
      devices.push({ name: dev.name, path: dev.args.sock, server: native.NativeServer.listenEdu(dev.args.sock) })
    } catch (err) {
      await closeAll()
      if (isNativeError(err)) throw new ServeError(`${dev.name}: ${err.message}`, err.code, dev.name, err)
      throw err
    }
  }
  return { devices, close: closeAll }
}
