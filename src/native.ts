/**
 * Typed access to the native addon.
 *
 * The napi-generated loader `index.js` at the package root picks the right
 * `emudev.<platform>.node` file (or the per-platform package) and the
 * generated `index.d.ts` beside it describes the exports. `import = require`
 * makes TypeScript take its types from that `index.d.ts` while the emitted
 * JavaScript is a plain `require('../index.js')`, which resolves to the same
 * root loader from both `src/` (tests under tsx) and `dist/` (the build).
 *
 * Native errors carry a stable `code` (see `crates/node/src/error.rs`):
 * `ERR_VFU_<ERRNO>` when a vfio-user or OS operation failed with that errno,
 * `ERR_VFU_UNKNOWN` for an errno the addon cannot name,
 * `ERR_EMUDEV_INVALID_ARG` for an argument the addon rejected,
 * `ERR_EMUDEV_SOCKET_IN_USE` / `ERR_EMUDEV_NOT_A_SOCKET` when a server cannot
 * take its socket path, `ERR_EMUDEV_CLOSED` for a call after `close()`,
 * `ERR_EMUDEV_TIMEOUT` when `waitIrq` (or an iavf command or link event) ran
 * out of time, `ERR_EMUDEV_NOT_READY` for an operation the object is not
 * ready for (iavf `stats()` before `start()`), `ERR_EMUDEV_IAVF_REFUSED` when
 * the iavf PF answered an op with an error status, and
 * `ERR_EMUDEV_IAVF_PROTOCOL` when it answered something unusable.
 */
import binding = require('../index.js')

/** The exports of the native addon, as typed by the generated `index.d.ts`. */
export type NativeBinding = typeof binding

/** The loaded native addon. Prefer the wrappers exported by the package entry point. */
export const native: NativeBinding = binding

/** The `code` of an error thrown by the native addon. */
export type NativeErrorCode =
  | 'ERR_VFU_UNKNOWN'
  | 'ERR_EMUDEV_INVALID_ARG'
  | 'ERR_EMUDEV_SOCKET_IN_USE'
  | 'ERR_EMUDEV_NOT_A_SOCKET'
  | 'ERR_EMUDEV_CLOSED'
  | 'ERR_EMUDEV_TIMEOUT'
  | 'ERR_EMUDEV_NOT_READY'
  | 'ERR_EMUDEV_IAVF_REFUSED'
  | 'ERR_EMUDEV_IAVF_PROTOCOL'
  | `ERR_VFU_E${string}`

/** The fixed (non-errno) codes of {@link NativeErrorCode}. */
export const NATIVE_ERROR_CODES: readonly NativeErrorCode[] = [
  'ERR_VFU_UNKNOWN',
  'ERR_EMUDEV_INVALID_ARG',
  'ERR_EMUDEV_SOCKET_IN_USE',
  'ERR_EMUDEV_NOT_A_SOCKET',
  'ERR_EMUDEV_CLOSED',
  'ERR_EMUDEV_TIMEOUT',
  'ERR_EMUDEV_NOT_READY',
  'ERR_EMUDEV_IAVF_REFUSED',
  'ERR_EMUDEV_IAVF_PROTOCOL',
]

/** An error thrown by the native addon. */
export interface NativeError extends Error {
  code: NativeErrorCode
}

/**
 * Whether `err` is an error thrown by the native addon, optionally with the
 * given `code`.
 */
export function isNativeError(err: unknown, code?: NativeErrorCode): err is NativeError {
  if (!(err instanceof Error)) return false
  const actual = (err as { code?: unknown }).code
  if (typeof actual !== 'string') return false
  const known = (NATIVE_ERROR_CODES as readonly string[]).includes(actual) || /^ERR_VFU_E[0-9A-Z]+$/.test(actual)
  return known && (code === undefined || actual === code)
}
