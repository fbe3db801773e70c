/**
 * What QEMU says it sent: a summary of its vfio-user trace events.
 *
 * The harness runs QEMU with `-trace vfio_user_*`; QEMU then prints one line
 * per event on stderr (`vfio_user_send_write  id 0x3 wrote 0x20`,
 * `vfio_user_recv_hdr  (unix:/run/emudev/edu0.sock) id 0x3 cmd 0x4 size 0x20 flags 0x1`,
 * optionally prefixed by `<pid>@<time>:`). {@link QemuTrace} counts them as
 * they arrive, so the harness can compare QEMU's view with the servers'
 * counters and show which requests a failing run got stuck on.
 */

/** vfio-user command numbers, for naming what QEMU sent. */
export const COMMANDS: Record<number, string> = {
  1: 'VERSION',
  2: 'DMA_MAP',
  3: 'DMA_UNMAP',
  4: 'DEVICE_GET_INFO',
  5: 'DEVICE_GET_REGION_INFO',
  6: 'DEVICE_GET_REGION_IO_FDS',
  7: 'DEVICE_GET_IRQ_INFO',
  8: 'DEVICE_SET_IRQS',
  9: 'REGION_READ',
  10: 'REGION_WRITE',
  11: 'DMA_READ',
  12: 'DMA_WRITE',
  13: 'DEVICE_RESET',
  15: 'REGION_WRITE_MULTI',
  16: 'DEVICE_FEATURE',
}
export const commandName = (n: number) => COMMANDS[n] ?? `command ${n}`

/**
 * What QEMU's own vfio-user trace events (`-trace vfio_user_*`, printed on
 * its stderr) say it sent and got back, summed up as the lines arrive.
 */
export class QemuTrace {
  /** Messages QEMU wrote to the sockets (requests and its replies to our DMA requests). */
  sent = 0
  /** Replies QEMU received, by command. */
  readonly replies = new Map<number, number>()
  /** Replies with the Error bit, as traced. */
  readonly errorReplies: string[] = []
  /** Requests the servers sent QEMU, by command. */
  readonly serverRequests = new Map<number, number>()
  /** REGION_READ/WRITE by region index. */
  readonly regionAccesses = new Map<number, number>()
  /** Each distinct SET_IRQS (index, start, count, flags) and how often. */
  readonly setIrqs = new Map<string, number>()
  dmaMaps = 0
  dmaUnmaps = 0
  /** The last trace lines, for a failure report. */
  readonly last: string[] = []

  /** Takes one stderr line; false if it is not a vfio-user trace line. */
  feed(line: string): boolean {
    const m = /^(?:\d+@[\d.]+:)?vfio_user_(\w+)\s*(.*)$/.exec(line)
    if (m?.[1] === undefined) return false
    const [event, rest] = [m[1], m[2] ?? '']
    this.last.push(line)
    if (this.last.length > 200) this.last.shift()
    const bump = <K>(map: Map<K, number>, key: K) => map.set(key, (map.get(key) ?? 0) + 1)
    if (event === 'send_write') this.sent++
    else if (event === 'dma_map') this.dmaMaps++
    else if (event === 'dma_unmap') this.dmaUnmaps++
    else if (event === 'set_irqs') bump(this.setIrqs, rest.trim().replace(/\s+/g, ' '))
    else if (event === 'region_rw') {
      const r = /region (\d+)/.exec(rest)
      if (r?.[1] !== undefined) bump(this.regionAccesses, Number(r[1]))
    } else if (event === 'recv_hdr') {
      const h = /cmd 0x([0-9a-f]+) size 0x[0-9a-f]+ flags 0x([0-9a-f]+)/.exec(rest)
      if (h?.[1] !== undefined && h[2] !== undefined) {
        const cmd = parseInt(h[1], 16)
        const flags = parseInt(h[2], 16)
        if ((flags & 0xf) === 1) {
          bump(this.replies, cmd)
          if ((flags & 0x20) !== 0) this.errorReplies.push(line)
        } else bump(this.serverRequests, cmd)
      }
    }
    return true
  }

  /** Readable summary lines. */
  summary(): string[] {
    const byCmd = (map: Map<number, number>) =>
      [...map.entries()]
        .sort((a, b) => a[0] - b[0])
        .map(([c, n]) => `${commandName(c)} ${n}`)
        .join(', ') || 'none'
    const answered = [...this.replies.values()].reduce((a, b) => a + b, 0)
    const lines = [
      `sent ${this.sent} messages; replies: ${byCmd(this.replies)}; without reply (No_reply): ${this.sent - answered}`,
      `region accesses: ${[...this.regionAccesses.entries()].sort((a, b) => a[0] - b[0]).map(([r, n]) => `#${r} ${n}`).join(', ') || 'none'};` +
        ` DMA_MAP ${this.dmaMaps}, DMA_UNMAP ${this.dmaUnmaps}; error replies ${this.errorReplies.length};` +
        ` server requests: ${byCmd(this.serverRequests)}`,
    ]
    for (const [irq, n] of this.setIrqs) lines.push(`SET_IRQS ${irq}${n > 1 ? ` (x${n})` : ''}`)
    for (const e of this.errorReplies.slice(0, 10)) lines.push(`error reply: ${e}`)
    return lines
  }
}

