/**
 * `Responder`: a small ARP, ICMP echo, UDP and TCP responder on an iavf port.
 *
 * ```ts
 * const port = await IavfPort.connect('/tmp/vf.sock')
 * await port.start()
 * const responder = new Responder(port, { ip: '198.18.0.2' })
 * const running = responder.start()     // answers until stop() or close()
 * ...                                   // somebody pings 198.18.0.2
 * await responder.stop()
 * await running                         // rejects if receiving or sending failed
 * console.log(responder.stats())        // { received, arpReplies, echoReplies, ignored, ... }
 * ```
 *
 * It answers, on the port's queue (default 0):
 *
 * - ARP requests (Ethernet/IPv4, broadcast or sent to its MAC) whose target
 *   is its IP, with an ARP reply from its MAC to the asker;
 * - ICMP echo requests to its IP and MAC (unfragmented IPv4 with a valid
 *   header checksum and a valid ICMP checksum) with an echo reply: the same
 *   identifier, sequence number and data, a fresh 20-byte IPv4 header (no
 *   options), TTL 64, both checksums computed anew.
 *
 * - UDP datagrams to its IP and MAC whose checksum is valid (or absent): to
 *   port 7 (echo, RFC 862) with the same payload back; to any other port
 *   with an ICMP port unreachable carrying the datagram's IP header and
 *   first 8 bytes (RFC 792), as a host without that service answers;
 * - TCP to port 9 (discard, RFC 863): it accepts connections (MSS 1460, a
 *   64 KiB window, no options beyond MSS), acknowledges every in-order
 *   segment and counts its bytes, re-acknowledges out-of-order ones, and
 *   answers a FIN with its own; at most 16 connections at a time;
 * - other TCP segments to its IP and MAC whose checksum is valid, other
 *   than resets: with a reset (RFC 9293's answer for a closed port).
 *
 * The UDP and TCP checksums are the ones a guest's stack leaves to the NIC
 * (checksum offload), so a valid one shows that the device completed it.
 *
 * Everything else is counted as ignored, by reason, and never throws:
 * `truncated` (too short for the headers it claims), `malformed` (impossible
 * header fields), `bad-checksum`, `not-for-us` (another MAC or IP) and
 * `unsupported` (other EtherTypes such as IPv6 or VLAN tags, other IP
 * protocols and ICMP types, ARP replies, IP fragments).
 *
 * Replies shorter than the Ethernet minimum (60 bytes without the FCS) are
 * padded with zeros to it, as a NIC puts them on the wire; `minFrameLen: 0`
 * sends them unpadded. {@link Responder.handle} is the pure part: one frame
 * in, the verdict and the reply bytes out.
 */
import type { IavfPort } from './iavf'

/** What a {@link Responder} needs of its port: an {@link IavfPort} has it. */
export type ResponderPort = Pick<IavfPort, 'mac' | 'packets' | 'send'>

/** Options of a {@link Responder}. */
export interface ResponderOptions {
  /** The IPv4 address it answers for (`198.18.0.2`). */
  ip: string
  /** Its MAC (`aa:bb:cc:dd:ee:ff`); default: the port's MAC when `start()` runs. */
  mac?: string
  /** The RX/TX queue pair it serves (default 0). */
  queue?: number
  /** Replies are zero-padded to this many bytes (default 60, the Ethernet minimum; 0: no padding). */
  minFrameLen?: number
  /** TTL of its IPv4 replies (default 64). */
  ttl?: number
  /** How long `stop()` waits for the receive loop to end, in milliseconds (default 2000). */
  stopTimeoutMs?: number
}

/** Why a frame got no answer. */
export type IgnoreReason = 'truncated' | 'malformed' | 'bad-checksum' | 'not-for-us' | 'unsupported'

/** All {@link IgnoreReason}s. */
export const IGNORE_REASONS: readonly IgnoreReason[] = ['truncated', 'malformed', 'bad-checksum', 'not-for-us', 'unsupported']

/** The kinds of reply a {@link Responder} sends. */
export type ReplyAction = 'arp-reply' | 'echo-reply' | 'udp-echo' | 'port-unreachable' | 'tcp-reset' | 'tcp-ack'

/** What {@link Responder.handle} decided for one frame. */
export type Verdict =
  | { readonly action: ReplyAction; readonly reply: Buffer }
  /** Handled, and nothing to send: a TCP ACK or reset the discard service takes in. */
  | { readonly action: 'no-reply' }
  | { readonly action: 'ignore'; readonly reason: IgnoreReason }

/** A responder's counters. */
export interface ResponderStats {
  /** Frames handled (received from the port, or given to `handle()`). */
  received: number
  /** Their bytes. */
  receivedBytes: number
  /** Of those, frames sent to the Ethernet broadcast address. */
  receivedBroadcast: number
  /** ARP requests for its IP. */
  arpRequests: number
  /** ICMP echo requests to its IP. */
  echoRequests: number
  /** UDP datagrams to its IP with a valid (or no) checksum. */
  udpDatagrams: number
  /** TCP segments to its IP with a valid checksum (resets included). */
  tcpSegments: number
  /** Connections the discard service (port 9) accepted. */
  tcpConnections: number
  /** In-order bytes the discard service received. */
  tcpBytes: number
  /** Connections closed by the peer's FIN (and answered with ours). */
  tcpClosed: number
  /** Frames that got no answer, all reasons. */
  ignored: number
  /** Ignored frames by reason. */
  ignoredBy: Record<IgnoreReason, number>
  /** ARP replies the port took for sending. */
  arpReplies: number
  /** Echo replies the port took for sending. */
  echoReplies: number
  /** UDP echo (port 7) replies the port took for sending. */
  udpEchoReplies: number
  /** ICMP port unreachables the port took for sending. */
  unreachableReplies: number
  /** TCP resets the port took for sending. */
  tcpResets: number
  /** TCP acknowledgements (SYN-ACK, ACK, FIN-ACK) of the discard service the port took. */
  tcpAcks: number
  /** Replies the port took for sending (all kinds). */
  sent: number
  /** Their bytes (padding included). */
  sentBytes: number
  /** Replies the port did not take (TX ring full). */
  sendDropped: number
}

const ETH_HEADER = 14
const ETHERTYPE_IPV4 = 0x0800
const ETHERTYPE_ARP = 0x0806
const ARP_LEN = 28
const ARP_REQUEST = 1
const ARP_REPLY = 2
const IPV4_HEADER = 20
const IP_PROTO_ICMP = 1
const IP_PROTO_TCP = 6
const IP_PROTO_UDP = 17
const UDP_HEADER = 8
const UDP_ECHO_PORT = 7
const TCP_HEADER = 20
const TCP_FIN = 0x01
const TCP_SYN = 0x02
const TCP_RST = 0x04
const TCP_ACK = 0x10
const TCP_DISCARD_PORT = 9
const TCP_MSS = 1460
const TCP_WINDOW = 0xffff
const TCP_MAX_CONNECTIONS = 16
const TCP_ISS = 0x10000
const ICMP_DEST_UNREACHABLE = 3
const ICMP_PORT_UNREACHABLE = 3
const ICMP_ECHO_REPLY = 0
const ICMP_ECHO_REQUEST = 8
const ICMP_HEADER = 8
const BROADCAST = Buffer.alloc(6, 0xff)

/** The RFC 1071 Internet checksum of `data` (an odd last byte is padded with a zero). */
export function internetChecksum(data: Uint8Array): number {
  let sum = 0
  const even = data.length & ~1
  for (let i = 0; i < even; i += 2) sum += (data[i]! << 8) | data[i + 1]!
  if (even !== data.length) sum += data[even]! << 8
  while (sum > 0xffff) sum = (sum & 0xffff) + (sum >>> 16)
  return ~sum & 0xffff
}

/**
 * The TCP/UDP checksum of `l4` (header and data, its checksum field as
 * received) over IPv4 `src` → `dst`: 0 when the received checksum is right.
 */
export function l4Checksum(src: Uint8Array, dst: Uint8Array, proto: number, l4: Uint8Array): number {
  const pseudo = Buffer.alloc(12)
  pseudo.set(src, 0)
  pseudo.set(dst, 4)
  pseudo[9] = proto
  pseudo.writeUInt16BE(l4.length, 10)
  return internetChecksum(Buffer.concat([pseudo, l4]))
}

/** `aa:bb:cc:dd:ee:ff` as 6 bytes; throws a `TypeError` for anything else. */
export function parseMac(mac: string): Buffer {
  if (!/^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/i.test(mac)) throw new TypeError(`not a MAC address: ${JSON.stringify(mac)}`)
  return Buffer.from(mac.replaceAll(':', ''), 'hex')
}

/** A dotted-quad IPv4 address as 4 bytes; throws a `TypeError` for anything else. */
export function parseIpv4(ip: string): Buffer {
  const parts = ip.split('.')
  const ok = parts.length === 4 && parts.every((p) => /^(0|[1-9][0-9]{0,2})$/.test(p) && Number(p) <= 255)
  if (!ok) throw new TypeError(`not an IPv4 address: ${JSON.stringify(ip)}`)
  return Buffer.from(parts.map(Number))
}

function formatMac(mac: Buffer): string {
  return [...mac].map((b) => b.toString(16).padStart(2, '0')).join(':')
}

const ignore = (reason: IgnoreReason): Verdict => ({ action: 'ignore', reason })
const NO_REPLY: Verdict = { action: 'no-reply' }

function emptyStats(): ResponderStats {
  return {
    received: 0,
    receivedBytes: 0,
    receivedBroadcast: 0,
    arpRequests: 0,
    echoRequests: 0,
    udpDatagrams: 0,
    tcpSegments: 0,
    tcpConnections: 0,
    tcpBytes: 0,
    tcpClosed: 0,
    ignored: 0,
    ignoredBy: { truncated: 0, malformed: 0, 'bad-checksum': 0, 'not-for-us': 0, unsupported: 0 },
    arpReplies: 0,
    echoReplies: 0,
    udpEchoReplies: 0,
    unreachableReplies: 0,
    tcpResets: 0,
    tcpAcks: 0,
    sent: 0,
    sentBytes: 0,
    sendDropped: 0,
  }
}

/** An ARP + ICMP echo responder for one IPv4 address on an iavf port (see the module documentation). */
export class Responder {
  readonly #port: ResponderPort
  readonly #ip: Buffer
  #mac: Buffer | undefined
  readonly #queue: number
  readonly #minFrameLen: number
  readonly #ttl: number
  readonly #stopTimeoutMs: number
  #stats = emptyStats()
  /** Discard-service connections by `srcIp:srcPort`. */
  readonly #conns = new Map<string, { rcvNxt: number; sndNxt: number; finSent: boolean }>()
  #ipId = 0
  #abort: AbortController | undefined
  #loop: Promise<void> | undefined

  /** Throws a `TypeError` for a bad IP, MAC or option. */
  constructor(port: ResponderPort, options: ResponderOptions) {
    this.#port = port
    this.#ip = parseIpv4(options.ip)
    if (options.mac !== undefined) this.#mac = this.#checkedMac(options.mac)
    this.#queue = Responder.#int('queue', options.queue ?? 0, 0, 255)
    this.#minFrameLen = Responder.#int('minFrameLen', options.minFrameLen ?? 60, 0, 9216)
    this.#ttl = Responder.#int('ttl', options.ttl ?? 64, 1, 255)
    this.#stopTimeoutMs = Responder.#int('stopTimeoutMs', options.stopTimeoutMs ?? 2000, 1, 600_000)
  }

  static #int(name: string, v: number, min: number, max: number): number {
    if (!Number.isInteger(v) || v < min || v > max) throw new TypeError(`${name} must be an integer from ${min} to ${max}, got ${v}`)
    return v
  }

  #checkedMac(mac: string): Buffer {
    const b = parseMac(mac)
    if ((b[0]! & 1) !== 0 || b.equals(Buffer.alloc(6))) throw new TypeError(`not a unicast MAC address: ${mac}`)
    return b
  }

  /** The IPv4 address it answers for. */
  get ip(): string {
    return [...this.#ip].join('.')
  }

  /** Its MAC, or null until `start()` takes the port's (when none was given). */
  get mac(): string | null {
    return this.#mac === undefined ? null : formatMac(this.#mac)
  }

  /** Whether the receive loop is running. */
  get running(): boolean {
    return this.#loop !== undefined
  }

  /** A copy of the counters. */
  stats(): ResponderStats {
    return { ...this.#stats, ignoredBy: { ...this.#stats.ignoredBy } }
  }

  /** Zeroes the counters. */
  resetStats(): void {
    this.#stats = emptyStats()
  }

  /**
   * Decides what to do with one received Ethernet frame (without FCS) and
   * counts it; returns the reply to send, if any. Never throws for any
   * frame. Needs the MAC (given, or taken by `start()`).
   */
  handle(frame: Uint8Array): Verdict {
    const mac = this.#mac
    if (mac === undefined) throw new Error('Responder has no MAC yet: give options.mac or start() it on a port that has one')
    const f = Buffer.from(frame.buffer, frame.byteOffset, frame.byteLength)
    const s = this.#stats
    s.received++
    s.receivedBytes += f.length
    if (f.length >= 6 && f.subarray(0, 6).equals(BROADCAST)) s.receivedBroadcast++
    const v = this.#decide(f, mac)
    switch (v.action) {
      case 'arp-reply':
        s.arpRequests++
        break
      case 'echo-reply':
        s.echoRequests++
        break
      case 'udp-echo':
      case 'port-unreachable':
        s.udpDatagrams++
        break
      case 'tcp-reset':
      case 'tcp-ack':
      case 'no-reply':
        s.tcpSegments++
        break
      case 'ignore':
        s.ignored++
        s.ignoredBy[v.reason]++
        break
    }
    return v
  }

  #decide(f: Buffer, mac: Buffer): Verdict {
    if (f.length < ETH_HEADER) return ignore('truncated')
    const dst = f.subarray(0, 6)
    const src = f.subarray(6, 12)
    // A group address cannot be a sender; answering it would multicast the reply.
    if ((src[0]! & 1) !== 0) return ignore('malformed')
    const toUs = dst.equals(mac)
    if (!toUs && !dst.equals(BROADCAST)) return ignore('not-for-us')
    const type = f.readUInt16BE(12)
    if (type === ETHERTYPE_ARP) return this.#arp(f, mac)
    if (type === ETHERTYPE_IPV4) return toUs ? this.#ipv4(f, mac) : ignore('not-for-us')
    return ignore('unsupported')
  }

  #arp(f: Buffer, mac: Buffer): Verdict {
    if (f.length < ETH_HEADER + ARP_LEN) return ignore('truncated')
    const a = f.subarray(ETH_HEADER, ETH_HEADER + ARP_LEN)
    // Ethernet hardware addresses, IPv4 protocol addresses: the only ARP there is to answer.
    if (a.readUInt16BE(0) !== 1 || a.readUInt16BE(2) !== ETHERTYPE_IPV4) return ignore('unsupported')
    if (a[4] !== 6 || a[5] !== 4) return ignore('malformed')
    if (a.readUInt16BE(6) !== ARP_REQUEST) return ignore('unsupported')
    const sha = a.subarray(8, 14)
    const spa = a.subarray(14, 18)
    const tpa = a.subarray(24, 28)
    if ((sha[0]! & 1) !== 0) return ignore('malformed')
    if (!tpa.equals(this.#ip)) return ignore('not-for-us')
    const reply = this.#frame(ETH_HEADER + ARP_LEN)
    sha.copy(reply, 0)
    mac.copy(reply, 6)
    reply.writeUInt16BE(ETHERTYPE_ARP, 12)
    const r = reply.subarray(ETH_HEADER)
    r.writeUInt16BE(1, 0)
    r.writeUInt16BE(ETHERTYPE_IPV4, 2)
    r[4] = 6
    r[5] = 4
    r.writeUInt16BE(ARP_REPLY, 6)
    mac.copy(r, 8)
    this.#ip.copy(r, 14)
    sha.copy(r, 18)
    spa.copy(r, 24)
    return { action: 'arp-reply', reply }
  }

  #ipv4(f: Buffer, mac: Buffer): Verdict {
    if (f.length < ETH_HEADER + IPV4_HEADER) return ignore('truncated')
    const p = f.subarray(ETH_HEADER)
    if (p[0]! >> 4 !== 4) return ignore('malformed')
    const ihl = (p[0]! & 0x0f) * 4
    if (ihl < IPV4_HEADER) return ignore('malformed')
    if (p.length < ihl) return ignore('truncated')
    const total = p.readUInt16BE(2)
    if (total < ihl) return ignore('malformed')
    // Anything after `total` is link-layer padding; less than `total` is a cut frame.
    if (p.length < total) return ignore('truncated')
    if (internetChecksum(p.subarray(0, ihl)) !== 0) return ignore('bad-checksum')
    if (!p.subarray(16, 20).equals(this.#ip)) return ignore('not-for-us')
    // More-fragments set or a non-zero offset: a piece of a datagram, not reassembled here.
    if ((p.readUInt16BE(6) & 0x3fff) !== 0) return ignore('unsupported')
    if (p[9] === IP_PROTO_UDP) return this.#udp(f, p, ihl, total, mac)
    if (p[9] === IP_PROTO_TCP) return this.#tcp(f, p, ihl, total, mac)
    if (p[9] !== IP_PROTO_ICMP) return ignore('unsupported')
    const icmp = p.subarray(ihl, total)
    if (icmp.length < ICMP_HEADER) return ignore('truncated')
    if (icmp[0] !== ICMP_ECHO_REQUEST || icmp[1] !== 0) return ignore('unsupported')
    if (internetChecksum(icmp) !== 0) return ignore('bad-checksum')
    const out = Buffer.from(icmp)
    out[0] = ICMP_ECHO_REPLY
    out[1] = 0
    out.writeUInt16BE(0, 2)
    out.writeUInt16BE(internetChecksum(out), 2)
    // The request's DSCP/ECN.
    const reply = this.#ipv4Reply(f, p, mac, IP_PROTO_ICMP, out, p[1]!)
    return { action: 'echo-reply', reply }
  }

  #udp(f: Buffer, p: Buffer, ihl: number, total: number, mac: Buffer): Verdict {
    const seg = p.subarray(ihl, total)
    if (seg.length < UDP_HEADER) return ignore('truncated')
    const len = seg.readUInt16BE(4)
    if (len < UDP_HEADER) return ignore('malformed')
    if (len > seg.length) return ignore('truncated')
    const udp = seg.subarray(0, len)
    // 0: the sender computed none (allowed over IPv4).
    if (udp.readUInt16BE(6) !== 0 && l4Checksum(p.subarray(12, 16), p.subarray(16, 20), IP_PROTO_UDP, udp) !== 0) {
      return ignore('bad-checksum')
    }
    if (udp.readUInt16BE(2) === UDP_ECHO_PORT) {
      const out = Buffer.alloc(len)
      udp.copy(out)
      out.writeUInt16BE(udp.readUInt16BE(2), 0)
      out.writeUInt16BE(udp.readUInt16BE(0), 2)
      out.writeUInt16BE(0, 6)
      const reply = this.#ipv4Reply(f, p, mac, IP_PROTO_UDP, out)
      const at = ETH_HEADER + IPV4_HEADER
      const sum = l4Checksum(reply.subarray(ETH_HEADER + 12, ETH_HEADER + 16), reply.subarray(ETH_HEADER + 16, ETH_HEADER + 20), IP_PROTO_UDP, out)
      reply.writeUInt16BE(sum === 0 ? 0xffff : sum, at + 6)
      return { action: 'udp-echo', reply }
    }
    // ICMP destination unreachable, port unreachable: the offending IP header and 8 bytes.
    const quoted = p.subarray(0, ihl + UDP_HEADER)
    const icmp = Buffer.alloc(ICMP_HEADER + quoted.length)
    icmp[0] = ICMP_DEST_UNREACHABLE
    icmp[1] = ICMP_PORT_UNREACHABLE
    quoted.copy(icmp, ICMP_HEADER)
    icmp.writeUInt16BE(internetChecksum(icmp), 2)
    return { action: 'port-unreachable', reply: this.#ipv4Reply(f, p, mac, IP_PROTO_ICMP, icmp) }
  }

  #tcp(f: Buffer, p: Buffer, ihl: number, total: number, mac: Buffer): Verdict {
    const seg = p.subarray(ihl, total)
    if (seg.length < TCP_HEADER) return ignore('truncated')
    const dataOffset = (seg[12]! >> 4) * 4
    if (dataOffset < TCP_HEADER) return ignore('malformed')
    if (dataOffset > seg.length) return ignore('truncated')
    if (l4Checksum(p.subarray(12, 16), p.subarray(16, 20), IP_PROTO_TCP, seg) !== 0) return ignore('bad-checksum')
    const flags = seg[13]!
    const key = `${p.subarray(12, 16).join('.')}:${seg.readUInt16BE(0)}`
    // Never answer a reset (RFC 9293 3.10.7.1); forget the connection.
    if ((flags & TCP_RST) !== 0) {
      this.#conns.delete(key)
      return NO_REPLY
    }
    if (seg.readUInt16BE(2) === TCP_DISCARD_PORT) {
      const v = this.#discard(f, p, seg, dataOffset, flags, key, mac)
      if (v !== undefined) return v
    }
    let reply: Buffer
    if ((flags & TCP_ACK) !== 0) {
      // <SEQ=SEG.ACK><CTL=RST>
      reply = this.#tcpSegment(f, p, seg, mac, seg.readUInt32BE(8), 0, TCP_RST, false)
    } else {
      // <SEQ=0><ACK=SEG.SEQ+SEG.LEN><CTL=RST,ACK>; SYN and FIN each count one.
      const segLen = seg.length - dataOffset + ((flags & TCP_SYN) !== 0 ? 1 : 0) + ((flags & TCP_FIN) !== 0 ? 1 : 0)
      reply = this.#tcpSegment(f, p, seg, mac, 0, seg.readUInt32BE(4) + segLen, TCP_RST | TCP_ACK, false)
    }
    return { action: 'tcp-reset', reply }
  }

  /**
   * The discard service: the reply for a segment of a connection it knows
   * or a SYN that opens one; undefined to answer with a reset.
   */
  #discard(f: Buffer, p: Buffer, seg: Buffer, dataOffset: number, flags: number, key: string, mac: Buffer): Verdict | undefined {
    const seq = seg.readUInt32BE(4)
    let c = this.#conns.get(key)
    if ((flags & TCP_SYN) !== 0) {
      if ((flags & TCP_ACK) !== 0) return undefined
      if (c === undefined) {
        if (this.#conns.size >= TCP_MAX_CONNECTIONS) return undefined
        c = { rcvNxt: (seq + 1) >>> 0, sndNxt: (TCP_ISS + 1) >>> 0, finSent: false }
        this.#conns.set(key, c)
        this.#stats.tcpConnections++
      }
      // A SYN again (ours was lost): the same SYN-ACK.
      return { action: 'tcp-ack', reply: this.#tcpSegment(f, p, seg, mac, TCP_ISS, c.rcvNxt, TCP_SYN | TCP_ACK, true) }
    }
    if (c === undefined || (flags & TCP_ACK) === 0) return undefined
    const len = seg.length - dataOffset
    if (seq === c.rcvNxt) {
      c.rcvNxt = (c.rcvNxt + len) >>> 0
      this.#stats.tcpBytes += len
      if ((flags & TCP_FIN) !== 0) c.rcvNxt = (c.rcvNxt + 1) >>> 0
    }
    const ack = seg.readUInt32BE(8)
    if (c.finSent && ack === c.sndNxt) {
      // The last ACK of the close.
      this.#conns.delete(key)
      return NO_REPLY
    }
    if ((flags & TCP_FIN) !== 0 && seq + len + 1 === c.rcvNxt && !c.finSent) {
      const reply = this.#tcpSegment(f, p, seg, mac, c.sndNxt, c.rcvNxt, TCP_FIN | TCP_ACK, false)
      c.sndNxt = (c.sndNxt + 1) >>> 0
      c.finSent = true
      this.#stats.tcpClosed++
      return { action: 'tcp-ack', reply }
    }
    // A bare ACK of ours needs no answer; data (in order or not) gets the cumulative ACK.
    if (len === 0 && (flags & TCP_FIN) === 0) return NO_REPLY
    return { action: 'tcp-ack', reply: this.#tcpSegment(f, p, seg, mac, c.sndNxt, c.rcvNxt, TCP_ACK, false) }
  }

  /** A TCP segment without data back to the sender of `seg`; the MSS option on a SYN. */
  #tcpSegment(f: Buffer, p: Buffer, seg: Buffer, mac: Buffer, seq: number, ack: number, flags: number, mss: boolean): Buffer {
    const len = TCP_HEADER + (mss ? 4 : 0)
    const out = Buffer.alloc(len)
    out.writeUInt16BE(seg.readUInt16BE(2), 0)
    out.writeUInt16BE(seg.readUInt16BE(0), 2)
    out.writeUInt32BE(seq >>> 0, 4)
    out.writeUInt32BE(ack >>> 0, 8)
    out[12] = (len / 4) << 4
    out[13] = flags
    out.writeUInt16BE((flags & TCP_RST) !== 0 ? 0 : TCP_WINDOW, 14)
    if (mss) {
      out[20] = 2
      out[21] = 4
      out.writeUInt16BE(TCP_MSS, 22)
    }
    const reply = this.#ipv4Reply(f, p, mac, IP_PROTO_TCP, out)
    const sum = l4Checksum(reply.subarray(ETH_HEADER + 12, ETH_HEADER + 16), reply.subarray(ETH_HEADER + 16, ETH_HEADER + 20), IP_PROTO_TCP, out)
    reply.writeUInt16BE(sum, ETH_HEADER + IPV4_HEADER + 16)
    return reply
  }

  /** An Ethernet + IPv4 reply to the sender of `f` (IP header `p`) carrying `payload`. */
  #ipv4Reply(f: Buffer, p: Buffer, mac: Buffer, proto: number, payload: Buffer, tos = 0): Buffer {
    const reply = this.#frame(ETH_HEADER + IPV4_HEADER + payload.length)
    f.copy(reply, 0, 6, 12)
    mac.copy(reply, 6)
    reply.writeUInt16BE(ETHERTYPE_IPV4, 12)
    const ip = reply.subarray(ETH_HEADER, ETH_HEADER + IPV4_HEADER)
    ip[0] = 0x45
    ip[1] = tos
    ip.writeUInt16BE(IPV4_HEADER + payload.length, 2)
    ip.writeUInt16BE(this.#ipId, 4)
    this.#ipId = (this.#ipId + 1) & 0xffff
    ip[8] = this.#ttl
    ip[9] = proto
    this.#ip.copy(ip, 12)
    p.copy(ip, 16, 12, 16)
    ip.writeUInt16BE(internetChecksum(ip), 10)
    payload.copy(reply, ETH_HEADER + IPV4_HEADER)
    return reply
  }

  /** A zeroed reply buffer of `len` bytes, padded up to `minFrameLen`. */
  #frame(len: number): Buffer {
    return Buffer.alloc(Math.max(len, this.#minFrameLen))
  }

  /**
   * Answers the port's frames until {@link Responder.stop} (or until the
   * port is closed). Takes the port's MAC first if none was given (rejects
   * if the port has none: start the port first). Rejects if receiving or
   * sending fails, and at once if it is already running.
   */
  start(): Promise<void> {
    if (this.#loop !== undefined) return Promise.reject(new Error('Responder is already running'))
    if (this.#mac === undefined) {
      const m = this.#port.mac
      if (m === null) return Promise.reject(new Error('the port has no MAC yet: start() the port first, or give options.mac'))
      try {
        this.#mac = this.#checkedMac(m)
      } catch (err) {
        return Promise.reject(err)
      }
    }
    const abort = new AbortController()
    this.#abort = abort
    const loop = this.#run(abort.signal).finally(() => {
      if (this.#loop === loop) {
        this.#loop = undefined
        this.#abort = undefined
      }
    })
    this.#loop = loop
    return loop
  }

  async #run(signal: AbortSignal): Promise<void> {
    for await (const frame of this.#port.packets({ queue: this.#queue, signal })) {
      const v = this.handle(frame)
      if (v.action === 'ignore' || v.action === 'no-reply') continue
      const taken = await this.#port.send([v.reply], this.#queue)
      const s = this.#stats
      if (taken < 1) {
        s.sendDropped++
        continue
      }
      s.sent++
      s.sentBytes += v.reply.length
      switch (v.action) {
        case 'arp-reply':
          s.arpReplies++
          break
        case 'echo-reply':
          s.echoReplies++
          break
        case 'udp-echo':
          s.udpEchoReplies++
          break
        case 'port-unreachable':
          s.unreachableReplies++
          break
        case 'tcp-reset':
          s.tcpResets++
          break
        case 'tcp-ack':
          s.tcpAcks++
          break
      }
    }
  }

  /**
   * Ends the receive loop and waits for it, at most `stopTimeoutMs`.
   * Resolves true if it ended (or was not running), false if it was still
   * busy when the time was up. Never rejects: the promise of `start()`
   * carries the loop's error.
   */
  async stop(): Promise<boolean> {
    const loop = this.#loop
    if (loop === undefined) return true
    this.#abort?.abort()
    let timer: NodeJS.Timeout | undefined
    const ended = loop.then(
      () => true,
      () => true,
    )
    const late = new Promise<boolean>((r) => {
      timer = setTimeout(() => r(false), this.#stopTimeoutMs)
    })
    try {
      return await Promise.race([ended, late])
    } finally {
      clearTimeout(timer)
    }
  }
}
