/**
 * A small typed event emitter for the device and client classes.
 *
 * `Events` maps each event name to the type of its one argument (`void` for
 * none). Listeners run synchronously, in the order they were added. A
 * listener that throws does not stop the others: the error goes to the
 * `'error'` listeners if there are any (and the event was not `'error'`
 * itself), otherwise it is rethrown on the next tick, where it becomes an
 * uncaught exception as it would with Node's own `EventEmitter`.
 */

// eslint-disable-next-line @typescript-eslint/no-explicit-any
type Listener = (arg: any) => void

/** The argument list of an event: none for `void`, else one value. */
export type EventArgs<T> = [T] extends [void] ? [] : [T]

export class TypedEmitter<Events extends Record<string, unknown>> {
  readonly #listeners = new Map<keyof Events, Listener[]>()

  /** Calls `listener` for every `event` from now on. */
  on<K extends keyof Events>(event: K, listener: (...args: EventArgs<Events[K]>) => void): this {
    const list = this.#listeners.get(event) ?? []
    list.push(listener as Listener)
    this.#listeners.set(event, list)
    return this
  }

  /** Calls `listener` for the next `event` only. */
  once<K extends keyof Events>(event: K, listener: (...args: EventArgs<Events[K]>) => void): this {
    const wrapper = (...args: EventArgs<Events[K]>): void => {
      this.off(event, wrapper)
      listener(...args)
    }
    return this.on(event, wrapper)
  }

  /** Removes one registration of `listener` for `event` (the most recent one). */
  off<K extends keyof Events>(event: K, listener: (...args: EventArgs<Events[K]>) => void): this {
    const list = this.#listeners.get(event)
    if (list === undefined) return this
    const i = list.lastIndexOf(listener as Listener)
    if (i >= 0) list.splice(i, 1)
    if (list.length === 0) this.#listeners.delete(event)
    return this
  }

  /** Number of listeners for `event`. */
  listenerCount(event: keyof Events): number {
    return this.#listeners.get(event)?.length ?? 0
  }

  /** Calls the listeners of `event`; true if there were any. */
  protected emit<K extends keyof Events>(event: K, ...args: EventArgs<Events[K]>): boolean {
    const list = this.#listeners.get(event)
    if (list === undefined || list.length === 0) return false
    for (const listener of [...list]) {
      try {
        ;(listener as (...a: unknown[]) => void)(...args)
      } catch (err) {
        this.#listenerFailed(event, err)
      }
    }
    return true
  }

  #listenerFailed(event: keyof Events, err: unknown): void {
    if (event !== 'error' && this.listenerCount('error') > 0) {
      this.emit('error' as keyof Events, ...([err] as EventArgs<Events[keyof Events]>))
      return
    }
    process.nextTick(() => {
      throw err
    })
  }
}
