/**
 * emudev: userspace PCI device emulation over vfio-user.
 *
 * The public API of the npm package. The Rust core does the work; this entry
 * point re-exports the typed native binding and the TypeScript layers on top
 * of it (device-string parsing today; the device and client APIs as they land).
 */
export { native, isNativeError } from './native'
export type { NativeBinding, NativeError, NativeErrorCode } from './native'
export {
  parseVdev,
  parseVdevList,
  socketOf,
  allowedKeys,
  VdevError,
  VDEV_ERROR_CODE,
  DRIVERS,
  MAX_NAME_LENGTH,
  MAX_SOCKET_PATH_BYTES,
  IAVF_QUEUES,
  IAVF_MTU,
} from './config'
export type { Vdev, EduVdev, IavfVdev, IavfClientVdev, DriverName } from './config'

import { native } from './native'

/** The version of the loaded native addon (equal to the package version in a consistent install). */
export function nativeVersion(): string {
  return native.nativeVersion()
}

/** The symbolic name of a Linux errno (`errnoName(22) === 'EINVAL'`); throws `ERR_EMUDEV_INVALID_ARG` for unknown numbers. */
export function errnoName(errno: number): string {
  return native.errnoName(errno)
}
