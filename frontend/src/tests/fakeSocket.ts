// A stand-in for socket.io-client's socket: records what the page emits, lets a test play the server.
import type { JobEvent } from '../services/types';

type Handler = (...args: unknown[]) => void;

export class FakeSocket {
  connected = false;
  handlers = new Map<string, Handler[]>();
  emitted: Array<{ name: string; data: unknown }> = [];

  on(name: string, handler: Handler) {
    this.handlers.set(name, [...(this.handlers.get(name) ?? []), handler]);
    return this;
  }

  emit(name: string, data: unknown, ack?: (answer: unknown) => void) {
    this.emitted.push({ name, data });
    if (name === 'subscribe' && ack) ack(data);
    return this;
  }

  removeAllListeners() {
    this.handlers.clear();
    return this;
  }

  disconnect() {
    this.connected = false;
    return this;
  }

  /** The server side: deliver a message to the page. */
  fire(name: string, ...args: unknown[]) {
    if (name === 'connect') this.connected = true;
    if (name === 'disconnect') this.connected = false;
    for (const handler of this.handlers.get(name) ?? []) handler(...args);
  }

  send(event: JobEvent) {
    this.fire(`optimization:${event.type}`, event);
  }

  subscriptions() {
    return this.emitted.filter((e) => e.name === 'subscribe').map((e) => e.data);
  }
}

let seqTime = 0;
export function event(
  seq: number,
  type: JobEvent['type'],
  data: Record<string, unknown>,
  jobId = 'job-1',
): JobEvent {
  seqTime += 1;
  return { type, job_id: jobId, seq, time: new Date(1_700_000_000_000 + seqTime).toISOString(), data };
}
