/**
 * The TypeScript back-end of an emulated iavf VF: with `backend=channel`, the
 * frames the client (a guest's driver, `IavfPort`, ...) transmits come out
 * here, and what is sent here arrives in the client's RX queues. The slow
 * path, for scripting a network: each frame crosses into JavaScript as a
 * Buffer.
 *
 * ```ts
 * const server = NativeServer.listenIavf('/tmp/vf.sock', { backend: 'channel' })
 * const channel = new BackendChannel(server)
 * for await (const frame of channel.frames({ signal })) {
 *   channel.send([reply(frame)])          // into the client's RX queue 0
 * }
 * ```
 */
import type { native } from './native'
import { pollFrames } from './poll'

/** The native server class (`NativeServer.listenIavf`). */
type NativeServer = InstanceType<typeof native.NativeServer>

/** Options of {@link BackendChannel.frames}. */
export interface ChannelFramesOptions {
  /** Only this queue's frames (default: any queue). */
  queue?: number
  /** Ends the iteration when aborted. */
  signal?: AbortSignal
}

/** The application side of an iavf server's `channel` back-end. */
export class BackendChannel {
  readonly #server: NativeServer

  /**
   * The channel of `server`, whose data path must have the `channel`
   * back-end (`listenIavf(path, { backend: 'channel' })` or
   * `attachBackend('channel')`); the calls below throw
   * `ERR_EMUDEV_NOT_READY` otherwise.
   */
  constructor(server: NativeServer) {
    this.#server = server
  }

  /**
   * Queues `frames` for the client's RX queue `queue` (default 0); returns
   * how many were taken (the rest did not fit: try again later).
   */
  send(frames: readonly Buffer[], queue = 0): number {
    return this.#server.channelSend([...frames], queue)
  }

  /** Up to `max` frames the client sent (on `queue`, or any queue), oldest first; none waits. */
  receive(max = 32, queue?: number): Buffer[] {
    return this.#server.channelReceive(queue, max)
  }

  /**
   * Every frame the client sends, as it comes, until `signal` aborts or the
   * server closes. While nothing comes it looks again after 1 ms, doubling
   * up to 16 ms.
   */
  frames(options: ChannelFramesOptions = {}): AsyncGenerator<Buffer, void, undefined> {
    return pollFrames(
      () => this.receive(64, options.queue),
      () => options.signal?.aborted === true || this.#server.closed,
      () => this.#server.closed,
    )
  }

}
