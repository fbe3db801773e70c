/**
 * The receive loop behind `IavfPort.packets()` and `BackendChannel.frames()`:
 * looks for frames without waiting natively and, while none come, sleeps
 * between looks from 1 ms doubling up to 16 ms.
 */

/** The longest sleep between two empty looks. */
export const MAX_IDLE_MS = 16

/**
 * Yields every frame `look()` returns until `stopped()` says so. An error from
 * `look()` ends the iteration quietly when `closed()` is true (the object was
 * closed meanwhile), and is thrown otherwise.
 */
export async function* pollFrames(
  look: () => Buffer[] | Promise<Buffer[]>,
  stopped: () => boolean,
  closed: () => boolean,
): AsyncGenerator<Buffer, void, undefined> {
  let idleMs = 0
  while (!stopped()) {
    let got: Buffer[]
    try {
      got = await look()
    } catch (err) {
      if (closed()) return
      throw err
    }
    for (const f of got) yield f
    if (got.length > 0) {
      idleMs = 0
      continue
    }
    idleMs = Math.min(MAX_IDLE_MS, Math.max(1, idleMs * 2))
    await new Promise((resolve) => setTimeout(resolve, idleMs))
  }
}
