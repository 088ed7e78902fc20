// Images and drawing: stored pixel values -> modality values (Rescale Slope/Intercept) -> window/level
// (DICOM PS3.3 C.11.2.1.2, linear) -> gray levels, drawn into the canvas at the slice's full size, so a
// preview decoded at a lower resolution is shown scaled up in place.

// An image as decoded: stored values (kind 'pixels'), or a server-rendered picture (kind 'bitmap').
export function pixelImage({ width, height, pixels, components = 1 }) {
  return { kind: 'pixels', width, height, pixels, components };
}

export function bitmapImage(bitmap) {
  return { kind: 'bitmap', width: bitmap.width, height: bitmap.height, bitmap };
}

// Typed view of little-endian sample bytes (the page runs on little-endian machines, as all browsers do).
export function typedPixels(buffer, bitsAllocated, signed) {
  if (bitsAllocated > 8) return signed ? new Int16Array(buffer) : new Uint16Array(buffer);
  return signed ? new Int8Array(buffer) : new Uint8Array(buffer);
}

export function range(image) {
  if (image.min === undefined) {
    let min = Infinity;
    let max = -Infinity;
    for (const v of image.pixels) {
      if (v < min) min = v;
      if (v > max) max = v;
    }
    image.min = min;
    image.max = max;
  }
  return [image.min, image.max];
}

// A default window covering the image's whole range of modality values.
export function fullWindow(image, slope, intercept) {
  const [min, max] = range(image).map((v) => v * slope + intercept);
  return { center: (min + max) / 2, width: Math.max(1, max - min) };
}

function grayLut(min, max, { center, width, slope, intercept, invert }) {
  const lut = new Uint32Array(max - min + 1);
  const w = Math.max(1, width);
  for (let v = min; v <= max; v++) {
    const y = v * slope + intercept;
    let g = ((y - (center - 0.5)) / (w - 1 || 1) + 0.5) * 255;
    g = g <= 0 ? 0 : g >= 255 ? 255 : Math.round(g);
    if (invert) g = 255 - g;
    lut[v - min] = 0xff000000 | (g << 16) | (g << 8) | g; // RGBA bytes on little-endian
  }
  return lut;
}

// Paint the image at its own resolution into an offscreen canvas (cached for the same view).
function paint(image, view) {
  if (image.kind === 'bitmap') return image.bitmap;
  const key = `${view.center}|${view.width}|${view.invert}`;
  if (image.painted?.key === key) return image.painted.canvas;
  const canvas = image.painted?.canvas ?? new OffscreenCanvas(image.width, image.height);
  const ctx = canvas.getContext('2d');
  const data = ctx.createImageData(image.width, image.height);
  const out = new Uint32Array(data.data.buffer);
  const px = image.pixels;
  if (image.components === 3) {
    for (let i = 0, j = 0; i < out.length; i++, j += 3) {
      out[i] = 0xff000000 | (px[j + 2] << 16) | (px[j + 1] << 8) | px[j];
    }
  } else {
    const [min, max] = range(image);
    const lut = grayLut(min, max, view);
    for (let i = 0; i < out.length; i++) out[i] = lut[px[i] - min];
  }
  ctx.putImageData(data, 0, 0);
  image.painted = { key, canvas };
  return canvas;
}

// Draw `image` fitted into `canvas`, scaled to the slice's full size (columns x rows).
export function draw(canvas, image, { columns, rows }, view) {
  const ctx = canvas.getContext('2d');
  ctx.fillStyle = '#000';
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  if (!image) return null;
  const scale = Math.min(canvas.width / columns, canvas.height / rows);
  const w = columns * scale;
  const h = rows * scale;
  const x = (canvas.width - w) / 2;
  const y = (canvas.height - h) / 2;
  ctx.imageSmoothingEnabled = true;
  ctx.imageSmoothingQuality = 'high';
  ctx.drawImage(paint(image, view), x, y, w, h);
  return { x, y, w, h };
}

export async function sha256Hex(typedArray) {
  if (!globalThis.crypto?.subtle) return null; // only in secure contexts (https, localhost)
  const bytes = new Uint8Array(typedArray.buffer, typedArray.byteOffset, typedArray.byteLength);
  const digest = await crypto.subtle.digest('SHA-256', bytes);
  return [...new Uint8Array(digest)].map((b) => b.toString(16).padStart(2, '0')).join('');
}

// FNV-1a over the sample bytes: a checksum that works without crypto.subtle (plain http to a host name).
export function fnv1a(typedArray) {
  const bytes = new Uint8Array(typedArray.buffer, typedArray.byteOffset, typedArray.byteLength);
  let h = 0x811c9dc5;
  for (let i = 0; i < bytes.length; i++) {
    h ^= bytes[i];
    h = Math.imul(h, 0x01000193);
  }
  return (h >>> 0).toString(16).padStart(8, '0');
}
