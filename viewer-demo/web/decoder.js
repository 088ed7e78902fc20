// The page's JPEG 2000 decoder: a worker running OpenJPEG (WebAssembly). If it cannot start (no
// WebAssembly, the npm package not installed, ?decoder=server), the viewer uses the server's rendered
// previews and uncompressed frames instead.

const INIT_TIMEOUT_MS = 15000;

export class Decoder {
  constructor() {
    this.worker = null;
    this.pending = new Map();
    this.nextId = 1;
    this.available = false;
    this.reason = '';
  }

  async start(codecUrl) {
    if (typeof WebAssembly !== 'object' || typeof Worker !== 'function') {
      this.reason = 'no WebAssembly or Web Workers in this browser';
      return false;
    }
    try {
      this.worker = new Worker(new URL('./decode-worker.js', import.meta.url));
    } catch (error) {
      this.reason = `cannot start the decoder worker: ${error}`;
      return false;
    }
    const ready = new Promise((resolve) => {
      const timer = setTimeout(() => resolve({ type: 'error', message: 'timed out' }), INIT_TIMEOUT_MS);
      this.worker.onmessage = ({ data }) => {
        if (data.type === 'ready' || data.type === 'error') {
          clearTimeout(timer);
          resolve(data);
          return;
        }
        const job = this.pending.get(data.id);
        if (!job) return;
        this.pending.delete(data.id);
        if (data.type === 'decoded') job.resolve(data);
        else job.reject(new Error(data.message));
      };
      this.worker.onerror = (event) => {
        clearTimeout(timer);
        resolve({ type: 'error', message: event.message || 'worker error' });
      };
    });
    this.worker.postMessage({ type: 'init', codecUrl: new URL(codecUrl, location.href).href });
    const answer = await ready;
    this.available = answer.type === 'ready';
    this.reason = this.available ? '' : `OpenJPEG did not load (${answer.message})`;
    if (!this.available) this.worker.terminate();
    return this.available;
  }

  // Decode one J2K codestream: {width, height, bitsPerSample, components, signed, buffer, ms}.
  decode(bytes) {
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      this.worker.postMessage({ type: 'decode', id, bytes });
    });
  }
}
