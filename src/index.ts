/**
 * emudev: userspace PCI device emulation over vfio-user.
 *
 * The public API of the npm package. The Rust core does the work; this entry
 * point re-exports the typed native binding and the TypeScript layers on top
 * of it: device strings, serving devices, and the vfio-user client.
 *
 * - `NativeServer.listenEdu(path)` serves the QEMU `edu` device on a socket,
 *   `NativeServer.listenIavf(path, { queues, mac, mtu })` an emulated Intel
 *   AVF (iavf) virtual function; `serve(parseVdevList([...]))` does it for a
 *   list of device strings.
 * - `IavfPort` is the iavf client driver: `await port.start()` brings a VF
 *   to link-up; `port.link`, `port.mac`, `port.stats()`, `'link'` events.
 * - `NativeClient.connect(path)` is a vfio-user client: region access, DMA
 *   buffers (`allocDma`), interrupts (`enableIrqs`, `waitIrq`); synchronous.
 * - `PciDevice` defines a PCI device in TypeScript (ids, BARs, IRQs, handlers)
 *   and serves it: `await device.listen(path)`.
 * - `VfioUserClient.connect(path)` is the asynchronous client: it can drive a
 *   device served by the same process, maps regions as Buffers and reports
 *   interrupts as events.
 * - Every native object has an async `close()`; call it when done. A
 *   listening `PciDevice` keeps Node alive until then; nothing else does.
 */
export { native, isNativeError, NATIVE_ERROR_CODES } from './native'
export type { NativeBinding, NativeError, NativeErrorCode } from './native'
export { serve, statsSummary, ServeError, DRIVER_UNAVAILABLE_CODE } from './server'
export type { ServeHandle, ServedDevice } from './server'
export {
  NativeServer,
  NativeClient,
  NativeAsyncClient,
  NativePciDevice,
  NativeIavfPort,
  DmaBuffer,
  eduLayout,
} from '../index.js'
export type {
  IavfServerOptions,
  IavfStats,
  IavfState,
  IavfPortStats,
  ConnectOptions,
  DeviceInfo,
  RegionDesc,
  SparseArea,
  IrqInfo,
  ServerStats,
  EduStats,
  EduLayout,
  MappedArea,
  DmaMapping,
  IrqVectorState,
  PciState,
  PciDeviceStats,
} from '../index.js'
export {
  PciDevice,
  IRQ_INTX,
  IRQ_MSI,
  IRQ_MSIX,
  IRQ_ERR,
  IRQ_REQ,
  ROM_REGION,
  CONFIG_REGION,
} from './device'
export type {
  PciDeviceSpec,
  PciIds,
  BarSpec,
  IrqSpec,
  DeviceHandlers,
  ReadValue,
  PciDeviceEvents,
  DmaMapEvent,
  HandlerErrorEvent,
  IrqOutcome,
  MsiOutcome,
  IntxOutcome,
} from './device'
export { IavfPort, IavfPortError, PORT_CLOSED_CODE } from './iavf'
export type {
  IavfPortOptions,
  IavfLink,
  IavfLinkEvent,
  IavfStep,
  IavfStepEvent,
  IavfPortStart,
  IavfPortEvents,
  IavfForwardOptions,
  IavfForwardStats,
  ReceiveOptions,
  PacketsOptions,
} from './iavf'
export { BackendChannel } from './backend'
export type { ChannelFramesOptions } from './backend'
export { Responder, internetChecksum } from './responder'
export type { ResponderOptions, ResponderStats, ResponderPort, IgnoreReason, Verdict } from './responder'
export { runShell, Shell } from './shell'
export { ServeShellHost } from './shell-host'
export type { ShellHost } from './shell-host'
export { startLive } from './live'
export type { LiveOptions, LiveView, LiveSummary, PortCounters } from './live'
export { VfioUserClient, ClientError } from './client'
export type { IrqEvent, ClientEvents, AllocDmaOptions } from './client'
export { TypedEmitter } from './emitter'
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

export { inspect, decodeConfig, walkCapabilities, walkExtendedCapabilities, formatReport, reportToJson } from './inspect'
export type { InspectReport, ConfigInfo, BarInfo, RomInfo, CapabilityInfo, RegionReport, IrqReport } from './inspect'

import { native } from './native'

/** The version of the loaded native addon (equal to the package version in a consistent install). */
export function nativeVersion(): string {
  return native.nativeVersion()
}

/** The symbolic name of a Linux errno (`errnoName(22) === 'EINVAL'`); throws `ERR_EMUDEV_INVALID_ARG` for unknown numbers. */
export function errnoName(errno: number): string {
  return native.errnoName(errno)
}
