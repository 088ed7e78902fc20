// Classic Web Worker: JPEG 2000 decoding with OpenJPEG's WebAssembly build (@cornerstonejs/codec-openjpeg),
// off the page's main thread. Messages: {type: 'init', codecUrl} -> {type: 'ready'} | {type: 'error'};
// {type: 'decode', id, bytes} -> {type: 'decoded', id, width, height, ...} | {type: 'failed', id, message}.
/* global OpenJPEGWASM, importScripts */

let codec = null;

async function init(codecUrl) {
  importScripts(codecUrl + 'openjpegwasm_decode.js');
  // print/printErr: OpenJPEG's [INFO] lines would otherwise fill the console.
  codec = await OpenJPEGWASM({ locateFile: (file) => codecUrl + file, print: () => {}, printErr: () => {} });
}

function decode(bytes) {
  const t0 = performance.now();
  const decoder = new codec.J2KDecoder();
  try {
    decoder.getEncodedBuffer(bytes.length).set(bytes);
    decoder.decode();
    const info = decoder.getFrameInfo();
    const pixels = decoder.getDecodedBuffer().slice(); // copy out of the WebAssembly heap
    return {
      width: info.width,
      height: info.height,
      bitsPerSample: info.bitsPerSample,
      components: info.componentCount,
      signed: info.isSigned,
      layers: decoder.getNumLayers(),
      levels: decoder.getNumDecompositions(),
      reversible: decoder.getIsReversible(),
      buffer: pixels.buffer,
      ms: performance.now() - t0,
    };
  } finally {
    decoder.delete();
  }
}

self.onmessage = async ({ data }) => {
  if (data.type === 'init') {
    try {
      await init(data.codecUrl);
      self.postMessage({ type: 'ready' });
    } catch (error) {
      self.postMessage({ type: 'error', message: String(error?.message || error) });
    }
    return;
  }
  if (data.type === 'decode') {
    try {
      const result = decode(data.bytes);
      self.postMessage({ type: 'decoded', id: data.id, ...result }, [result.buffer]);
    } catch (error) {
      self.postMessage({ type: 'failed', id: data.id, message: String(error?.message || error) });
    }
  }
};
