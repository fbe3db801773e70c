/**
 * Device strings in the DPDK `--vdev` style: `<driver><instance>[,key=value]*`.
 *
 * `parseVdev('emu_edu0,sock=/tmp/edu.sock')` gives
 * `{ name: 'emu_edu0', driver: 'emu_edu', instance: 0, args: { sock: '/tmp/edu.sock' } }`.
 * Every driver has a fixed set of keys; values are checked here (numbers,
 * ranges, MAC syntax, socket path length) so that a bad string is rejected
 * with a message naming the bad part before anything native is touched.
 *
 * Drivers:
 * - `emu_edu`: the QEMU educational device served over vfio-user. `sock` (required).
 * - `emu_iavf`: an emulated Intel AVF (iavf) virtual function served over vfio-user.
 *   `sock` (required), `queues` (1-16 queue pairs), `mac`, `mtu` (68-9702), `backend`,
 *   `doorbells` (`trap`, the default: tail writes are trapped messages; `mmap`: the tails sit on
 *   mmappable doorbell pages that a polling data path reads; `kick`: the pages plus one eventfd
 *   per queue pair a client signals after its stores, so the idle data path sleeps until kicked).
 * - `iavf_client`: the client-side iavf driver attached to a vfio-user socket. `path`
 *   (required), `queues` (1-16 queue pairs to bring up, default 1). As in the seed's
 *   `--vdev 'iavf_client,path=/tmp/sock1'`, its instance number may be left out (it is then 0).
 */

/** The error code of every {@link VdevError}. */
export const VDEV_ERROR_CODE = 'ERR_EMUDEV_INVALID_VDEV'

/** A device string was rejected; the message names the offending part. */
export class VdevError extends Error {
  /** Always {@link VDEV_ERROR_CODE}, so callers can branch on `err.code` as for native errors. */
  readonly code = VDEV_ERROR_CODE
  /** The complete device string that was rejected. */
  readonly vdev: string

  constructor(message: string, vdev: string) {
    super(message)
    this.name = 'VdevError'
    this.vdev = vdev
  }
}

/** `emu_edu<N>`: the QEMU educational device. */
export interface EduVdev {
  name: string
  driver: 'emu_edu'
  instance: number
  args: { sock: string }
}

/** `emu_iavf<N>`: an emulated iavf virtual function. Absent keys take the device's defaults. */
export interface IavfVdev {
  name: string
  driver: 'emu_iavf'
  instance: number
  args: { sock: string; queues?: number; mac?: string; mtu?: number; backend?: string; doorbells?: 'trap' | 'mmap' | 'kick' }
}

/** `iavf_client<N>`: the iavf driver attached, as a vfio-user client, to the socket at `path`. */
export interface IavfClientVdev {
  name: string
  driver: 'iavf_client'
  instance: number
  args: { path: string; queues?: number }
}

/** A parsed and validated device string. */
export type Vdev = EduVdev | IavfVdev | IavfClientVdev

/** The names of the known drivers. */
export type DriverName = Vdev['driver']

/**
 * Longest device name, as in DPDK (`RTE_DEV_NAME_MAX_LEN` is 64 bytes
 * including the terminating NUL).
 */
export const MAX_NAME_LENGTH = 63

/** Longest UNIX socket path: `sun_path` is 108 bytes on Linux, including the NUL. */
export const MAX_SOCKET_PATH_BYTES = 107

/** Queue pairs an iavf VF can have (virtchnl base mode maps at most 16). */
export const IAVF_QUEUES = { min: 1, max: 16 } as const

/**
 * MTU range of an iavf VF, as the device (`IavfConfig`) accepts it: at least
 * the IPv4 minimum (68); at most the largest frame (9728) less the Ethernet
 * header (14), two VLAN tags (8) and the FCS (4).
 */
export const IAVF_MTU = { min: 68, max: 9702 } as const

type Validator = (value: string, key: string, device: string) => string | number

interface KeySpec {
  required: boolean
  validate: Validator
}

const KEYS: { readonly [D in DriverName]: Readonly<Record<string, KeySpec>> } = {
  emu_edu: {
    sock: { required: true, validate: socketPath },
  },
  emu_iavf: {
    sock: { required: true, validate: socketPath },
    queues: { required: false, validate: integerIn(IAVF_QUEUES.min, IAVF_QUEUES.max) },
    mac: { required: false, validate: unicastMac },
    mtu: { required: false, validate: integerIn(IAVF_MTU.min, IAVF_MTU.max) },
    backend: { required: false, validate: backendSpec },
    doorbells: { required: false, validate: oneOf(['trap', 'mmap', 'kick']) },
  },
  iavf_client: {
    path: { required: true, validate: socketPath },
    queues: { required: false, validate: integerIn(IAVF_QUEUES.min, IAVF_QUEUES.max) },
  },
}

/** Drivers whose device name may leave out the instance number (`iavf_client,path=...`). */
const INSTANCE_OPTIONAL: ReadonlySet<DriverName> = new Set<DriverName>(['iavf_client'])

/** The known drivers, in the order used by messages. */
export const DRIVERS: readonly DriverName[] = Object.keys(KEYS) as DriverName[]

/** The keys a driver accepts, in the order used by messages. */
export function allowedKeys(driver: DriverName): string[] {
  return Object.keys(KEYS[driver])
}

function isDriver(s: string): s is DriverName {
  return Object.prototype.hasOwnProperty.call(KEYS, s)
}

/** Parses and validates one device string; throws {@link VdevError}. */
export function parseVdev(vdev: string): Vdev {
  const fail = (message: string): never => {
    throw new VdevError(message, vdev)
  }
  if (vdev.length === 0) fail('empty device string')
  const [name = '', ...parts] = vdev.split(',')
  const { driver, instance } = parseName(name, fail)
  const specs = KEYS[driver]
  const args: Record<string, string | number> = {}

  for (const part of parts) {
    if (part.length === 0) fail(`empty argument in '${vdev}' (stray comma?)`)
    const eq = part.indexOf('=')
    if (eq < 0) fail(`argument '${part}' for ${name} has no value (expected ${part}=...)`)
    const key = part.slice(0, eq)
    const value = part.slice(eq + 1)
    const spec = Object.prototype.hasOwnProperty.call(specs, key) ? specs[key] : undefined
    if (spec === undefined) {
      fail(`unknown key '${key}' for ${name} (allowed: ${allowedKeys(driver).join(', ')})`)
    } else {
      if (Object.prototype.hasOwnProperty.call(args, key)) fail(`duplicate key '${key}' for ${name}`)
      if (value.length === 0) fail(`empty value for key '${key}' of ${name}`)
      try {
        args[key] = spec.validate(value, key, name)
      } catch (err) {
        if (err instanceof ValueError) fail(err.message)
        throw err
      }
    }
  }
  for (const [key, spec] of Object.entries(specs)) {
    if (spec.required && !Object.prototype.hasOwnProperty.call(args, key)) {
      fail(`missing required key '${key}' for ${name} (e.g. ${name},${key}=/tmp/${name}.sock)`)
    }
  }
  // The table above guarantees `args` has the shape of the driver's interface.
  return { name, driver, instance, args } as Vdev
}

/**
 * Parses several device strings (e.g. repeated `--vdev` flags) and checks
 * that they can coexist: device names are unique and no two devices use the
 * same socket.
 */
export function parseVdevList(vdevs: readonly string[]): Vdev[] {
  const parsed = vdevs.map(parseVdev)
  const names = new Map<string, Vdev>()
  const sockets = new Map<string, Vdev>()
  for (const [i, dev] of parsed.entries()) {
    const raw = vdevs[i] ?? dev.name
    if (names.has(dev.name)) throw new VdevError(`duplicate device name '${dev.name}'`, raw)
    names.set(dev.name, dev)
    const sock = socketOf(dev)
    const other = sockets.get(sock)
    if (other !== undefined) {
      throw new VdevError(`socket '${sock}' is used by both ${other.name} and ${dev.name}`, raw)
    }
    sockets.set(sock, dev)
  }
  return parsed
}

/** The vfio-user socket a device listens on or connects to. */
export function socketOf(dev: Vdev): string {
  return dev.driver === 'iavf_client' ? dev.args.path : dev.args.sock
}

function parseName(name: string, fail: (message: string) => never): { driver: DriverName; instance: number } {
  if (name.length === 0) fail('missing device name before the first comma')
  if (name.length > MAX_NAME_LENGTH) fail(`device name '${name}' is longer than ${MAX_NAME_LENGTH} characters`)
  const m = /^([a-z_]+)([0-9]*)$/.exec(name)
  if (m === null) {
    return fail(`bad device name '${name}' (expected driver + instance number, e.g. emu_edu0)`)
  }
  const driver = m[1] ?? ''
  const digits = m[2] ?? ''
  if (!isDriver(driver)) return fail(`unknown driver '${driver}' in '${name}' (known: ${DRIVERS.join(', ')})`)
  if (digits.length === 0) {
    if (INSTANCE_OPTIONAL.has(driver)) return { driver, instance: 0 }
    fail(`device name '${name}' lacks an instance number (e.g. ${driver}0)`)
  }
  if (digits.length > 1 && digits.startsWith('0')) fail(`instance number of '${name}' has a leading zero`)
  return { driver, instance: Number(digits) }
}

class ValueError extends Error {}

function socketPath(value: string, key: string, device: string): string {
  if (value.includes('\0')) throw new ValueError(`value of '${key}' for ${device} contains a NUL byte`)
  const bytes = Buffer.byteLength(value, 'utf8')
  if (bytes > MAX_SOCKET_PATH_BYTES) {
    throw new ValueError(
      `value of '${key}' for ${device} is ${bytes} bytes; a UNIX socket path is at most ${MAX_SOCKET_PATH_BYTES}`,
    )
  }
  return value
}

function integerIn(min: number, max: number): Validator {
  return (value, key, device) => {
    const n = /^[0-9]+$/.test(value) ? Number(value) : NaN
    if (!Number.isSafeInteger(n) || n < min || n > max) {
      throw new ValueError(`bad value '${value}' for '${key}' of ${device} (expected an integer ${min}-${max})`)
    }
    return n
  }
}

function unicastMac(value: string, key: string, device: string): string {
  if (!/^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$/.test(value)) {
    throw new ValueError(`bad value '${value}' for '${key}' of ${device} (expected a MAC like 02:00:00:00:00:01)`)
  }
  const mac = value.toLowerCase()
  const first = parseInt(mac.slice(0, 2), 16)
  if ((first & 1) !== 0) throw new ValueError(`'${key}' for ${device} is a multicast address: ${value}`)
  if (mac === '00:00:00:00:00:00') throw new ValueError(`'${key}' for ${device} is the all-zero address`)
  return mac
}

/** Free-form values: which back-ends exist is for the native data path to say, not this table. */
function oneOf(values: readonly string[]): Validator {
  return (value, key, device) => {
    if (!values.includes(value)) throw new ValueError(`bad value '${value}' for '${key}' of ${device} (expected ${values.join(' or ')})`)
    return value
  }
}

/** The forms of `backend=` (the native side builds them; this checks their shape early). */
export const BACKEND_FORMS = ['loopback', 'macswap', 'rxonly', 'txonly[:LEN]', 'pair:<peer>', 'pcap:<file>', 'pcap-replay:<file>', 'channel'] as const

function backendSpec(value: string, key: string, device: string): string {
  const ok =
    ['loopback', 'macswap', 'rxonly', 'txonly', 'channel'].includes(value) ||
    /^txonly:[0-9]+$/.test(value) ||
    /^pair:[A-Za-z0-9_]+$/.test(value) ||
    /^(pcap|pcap-replay):.+$/.test(value)
  if (!ok) throw new ValueError(`bad value '${value}' for '${key}' of ${device} (expected ${BACKEND_FORMS.join(', ')})`)
  if (value === `pair:${device}`) throw new ValueError(`bad value '${value}' for '${key}' of ${device} (a device cannot be paired with itself)`)
  return value
}
