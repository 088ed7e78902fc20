// Progressive loading of a series, slice by slice.
//
// Each slice goes through the stages of the chosen mode, one after the other (a preview is never
// overtaken by its own lossless frame); slices run in parallel, the current slice first, then the
// others by distance, previews of all before the lossless frames of the far ones. Each stage tries its
// variants in order, e.g. a JPEG 2000 cut decoded in the page, else the server's rendered preview.
//
// Not every instance has a layered master (a lossy original is kept as received; a new one waits for its
// master), and asking for one it does not have would be answered 406 or 503, which the browser reports as an
// error. So the JPEG 2000 requests carry a fallback in the same Accept header, and the answer's media type
// says what came: `image/jp2` (a cut or the whole master, or a J2K original as stored) or, when the server
// has no J2K to send, `application/octet-stream`, the stored frame decoded by the server at full size.

import { HttpError, mediaParams } from './net.js';
import { bitmapImage, pixelImage, typedPixels } from './render.js';

const J2K_LOSSLESS = '1.2.840.10008.1.2.4.90';
const J2K_OR_UNCOMPRESSED = 'image/jp2, application/octet-stream; q=0.5';
const CONCURRENCY = 2;
// The preview: the first `layers` quality layers of the smallest resolution level at least `size` pixels
// across (fsiz). Two of the master's six layers keep a brain window readable; ?preview=1,128 and the like
// try others.
export const preview = { layers: 2, size: 256 };

export const MODES = {
  progressive: {
    label: 'Progressive: preview, then lossless',
    stages: [
      { name: 'preview', variants: ['j2k-cut', 'rendered'] },
      { name: 'lossless', variants: ['j2k-full', 'raw'] },
    ],
  },
  j2k: { label: 'Lossless J2K only', stages: [{ name: 'lossless', variants: ['j2k-full', 'raw'] }] },
  raw: { label: 'Uncompressed only', stages: [{ name: 'lossless', variants: ['raw'] }] },
};

// What each variant asks the server for, and how it turns the answer into an image.
// label(slice) says what is asked for; once answered, answered(slice, mediaParams) says what came.
const VARIANTS = {
  'j2k-cut': {
    needsDecoder: true,
    label: (s) => `JPEG 2000, ${preview.layers} layer${preview.layers > 1 ? 's' : ''}, ≥${previewSize(s)} px`,
    url: (s) => `${s.frameUrl}?layers=${preview.layers}&fsiz=${previewSize(s)},${previewSize(s)}`,
    accept: J2K_OR_UNCOMPRESSED,
  },
  'j2k-full': {
    needsDecoder: true,
    label: () => 'JPEG 2000, whole master',
    url: (s) => s.frameUrl,
    accept: J2K_OR_UNCOMPRESSED,
  },
  rendered: {
    needsDecoder: false,
    label: (s) => `server-rendered JPEG ${previewSize(s)} px`,
    url: (s) => `${s.frameUrl}/rendered?viewport=${previewSize(s)},${previewSize(s)}` +
      (s.window ? `&window=${s.window.center},${s.window.width},linear` : ''),
    accept: 'image/jpeg',
  },
  raw: {
    needsDecoder: false,
    label: () => 'uncompressed',
    url: (s) => s.frameUrl,
    accept: 'application/octet-stream',
  },
};

function previewSize(slice) {
  return Math.min(preview.size, slice.rows, slice.columns);
}

export class SeriesLoader {
  // slices: [{frameUrl, rows, columns, bitsAllocated, signed, components, lossyOriginal, window}]
  constructor({ slices, link, decoder, mode, onChange }) {
    this.link = link;
    this.decoder = decoder;
    this.mode = MODES[mode] ?? MODES.progressive;
    this.onChange = onChange;
    this.current = 0;
    this.active = 0;
    this.abort = new AbortController();
    this.started = performance.now();
    this.slices = slices.map((s, index) => ({
      ...s,
      index,
      best: null, // {image, stage, quality, bytes}
      history: [], // names of the stages that became this slice's image, in order
      next: 0,
      busy: false,
      hasMaster: false, // a layered master answered (so its fidelity ladder, /layers, exists)
      stages: this.mode.stages.map((st) => ({
        // What a lossy original's full image is called, from the start (Lossy Image Compression 01).
        name: st.name === 'lossless' && s.lossyOriginal ? 'original' : st.name,
        status: 'waiting', variant: '', bytes: 0, total: 0, ms: 0, decodeMs: 0,
        error: '', // why the stage failed
        fallbacks: [], // variants that failed before the one used
      })),
    }));
  }

  // A lossy original has no master to cut a preview from: the server renders one.
  variantsFor(slice, spec) {
    return slice.lossyOriginal ? spec.variants.filter((v) => v !== 'j2k-cut') : spec.variants;
  }

  focus(index) {
    this.current = index;
    this.pump();
  }

  cancel() {
    this.abort.abort();
  }

  pump() {
    while (this.active < CONCURRENCY && !this.abort.signal.aborted) {
      const slice = this.pick();
      if (!slice) break;
      this.run(slice);
    }
  }

  pick() {
    const ready = (s) => !s.busy && s.next < s.stages.length;
    const order = this.slices
      .filter(ready)
      .sort((a, b) => Math.abs(a.index - this.current) - Math.abs(b.index - this.current));
    const current = order.find((s) => s.index === this.current);
    if (current) return current;
    for (let stage = 0; stage < this.mode.stages.length; stage++) {
      const s = order.find((x) => x.next === stage);
      if (s) return s;
    }
    return null;
  }

  async run(slice) {
    slice.busy = true;
    this.active++;
    const stage = slice.stages[slice.next];
    const spec = this.mode.stages[slice.next];
    stage.status = 'loading';
    this.onChange(slice, 'progress');
    try {
      const result = await this.fetchStage(slice, stage, this.variantsFor(slice, spec));
      if (result) {
        // The row is named after what came: a lossy original is the full image, not a lossless one.
        if (result.quality === 'original') stage.name = 'original';
        else if (result.quality === 'lossless') stage.name = 'lossless';
        slice.best = { ...result, stage: stage.name, bytes: stage.bytes };
        slice.history.push(stage.name);
        slice.hasMaster ||= result.fromMaster;
        stage.status = 'done';
        stage.quality = result.quality;
        // The full image is on screen: the later stages have nothing to add, and are not shown.
        if (result.quality !== 'lossy') slice.stages.splice(slice.next + 1);
      }
    } catch (error) {
      if (error.name === 'AbortError') return;
      stage.status = 'failed';
      stage.error = String(error.message || error);
    } finally {
      slice.next++;
      slice.busy = false;
      this.active--;
    }
    this.onChange(slice, 'image');
    this.pump();
  }

  // Try the stage's variants in order; throws the last error if none works.
  async fetchStage(slice, stage, variants) {
    let lastError = new Error('no usable variant');
    for (const name of variants) {
      const variant = VARIANTS[name];
      if (variant.needsDecoder && !this.decoder?.available) continue;
      stage.variant = variant.label(slice);
      stage.bytes = 0;
      stage.total = 0;
      const t0 = performance.now();
      try {
        const response = await this.link.fetch(variant.url(slice), {
          headers: { Accept: variant.accept },
          signal: this.abort.signal,
          onProgress: (received, total) => {
            stage.bytes = received;
            stage.total = total;
            this.onChange(slice, 'progress');
          },
        });
        const t1 = performance.now();
        const result = await this.toImage(name, slice, response);
        stage.decodeMs = performance.now() - t1;
        stage.ms = performance.now() - t0;
        stage.transferSyntax = mediaParams(response.contentType)['transfer-syntax'] || '';
        stage.variant = result.label ?? stage.variant;
        return result;
      } catch (error) {
        if (error.name === 'AbortError') throw error;
        lastError = error;
        stage.fallbacks.push(`${stage.variant}: ${error.message || error}`);
      }
    }
    throw lastError;
  }

  // {image, quality, label, fromMaster}: quality is 'lossy' (a preview), 'lossless' (the master's pixels,
  // or the server's uncompressed frame of an image that was never lossy-compressed) or 'original' (the full
  // image of a lossy original, Lossy Image Compression 01, or a lossy J2K as stored).
  async toImage(name, slice, response) {
    const params = mediaParams(response.contentType);
    const full = slice.lossyOriginal ? 'original' : 'lossless';
    if (name === 'rendered') {
      if (!params.type.startsWith('image/')) throw new HttpError(response.status, `got ${params.type}`);
      const bitmap = await createImageBitmap(new Blob([response.bytes], { type: params.type }));
      return { image: bitmapImage(bitmap), quality: 'lossy' };
    }
    if (params.type === 'application/octet-stream') {
      // Asked for (raw), or the J2K requests' fallback: the server has no master of this frame to send.
      const pixels = typedPixels(response.bytes.buffer, slice.bitsAllocated, slice.signed);
      const image = pixelImage({ width: slice.columns, height: slice.rows, pixels, components: slice.components });
      const label = name === 'raw' ? 'uncompressed' : 'uncompressed, no JPEG 2000 master to send';
      return { image, quality: full, label, fromMaster: false };
    }
    if (name === 'raw') throw new Error(`expected octet-stream, got ${params.type}`);
    // JPEG 2000: decode in the page. A whole reversible (.90) codestream at full size is the master.
    if (!params.type.startsWith('image/jp')) throw new Error(`expected a JPEG 2000 codestream, got ${params.type}`);
    const d = await this.decoder.decode(response.bytes);
    const pixels = typedPixels(d.buffer, d.bitsPerSample, d.signed);
    const image = pixelImage({ width: d.width, height: d.height, pixels, components: d.components });
    const ts = params['transfer-syntax'] || '';
    const atFullSize = d.width === slice.columns && d.height === slice.rows;
    if (atFullSize && ts === J2K_LOSSLESS) {
      return { image, quality: full, label: `JPEG 2000, whole master (${ts})`, fromMaster: true };
    }
    if (name === 'j2k-full') {
      // The whole frame was asked for and a J2K that is not reversible came: a lossy original as stored.
      return { image, quality: 'original', label: `JPEG 2000 as stored, lossy (${ts})`, fromMaster: false };
    }
    // Only a master can be cut, so a J2K answer to the cut request is one.
    const label = `JPEG 2000, ${d.layers} layer${d.layers === 1 ? '' : 's'}, ${d.width}×${d.height} (${ts})`;
    return { image, quality: 'lossy', label, fromMaster: true };
  }

  summary() {
    const count = (pred) => this.slices.filter(pred).length;
    return {
      slices: this.slices.length,
      previews: count((s) => s.best),
      full: count((s) => s.best && s.best.quality !== 'lossy'), // lossless, or a lossy original in full
      lossless: count((s) => s.best?.quality === 'lossless'),
      bytes: this.slices.reduce((n, s) => n + s.stages.reduce((m, st) => m + st.bytes, 0), 0),
      ms: performance.now() - this.started,
      done: this.slices.every((s) => s.next >= s.stages.length && !s.busy),
    };
  }
}
