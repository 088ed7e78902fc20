// The viewer demo: a study list from QIDO-RS, and a stack view of one series that shows a small lossy
// preview of each slice first and refines it to the lossless frame, saying which it shows.
//
// URL parameters: token (an access token, see auth.js), study, series, slice (0-based), link (local, 20M, 2M, 512k), mode (progressive, j2k, raw),
// decoder (server = do not decode JPEG 2000 in the page), preview (layers,size; default 2,256). For tests and the curious, window.viewerState
// describes what is on screen, including a SHA-256 of the displayed stored pixel values.

import { installToken } from './auth.js';
import config from './config.js';
import { Decoder } from './decoder.js';
import { MODES, SeriesLoader, preview } from './loader.js';
import { DicomWeb, LINKS, Link, value, values } from './net.js';
import { draw, fnv1a, fullWindow, sha256Hex } from './render.js';

installToken((config.publicUrl || '') + config.root); // ?token=... when the server wants one
const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const web = new DicomWeb((config.publicUrl || '') + config.root);
const decoder = new Decoder();
const NON_IMAGE = new Set(['SR', 'KO', 'PR', 'SEG', 'RTSTRUCT', 'RTPLAN', 'DOC', 'REG']);

const [previewLayers, previewSize] = (params.get('preview') || '').split(',').map(Number);
if (previewLayers > 0) preview.layers = previewLayers;
if (previewSize > 0) preview.size = previewSize;

const view = {
  study: params.get('study'),
  series: params.get('series'),
  slice: Number(params.get('slice')) || 0,
  link: params.get('link') in LINKS ? params.get('link') : 'local',
  mode: params.get('mode') in MODES ? params.get('mode') : 'progressive',
  loader: null,
  geometry: null, // {rows, columns} of the series' first image
  window: null, // {center, width}
  defaultWindow: null,
  rescale: { slope: 1, intercept: 0 },
  invert: false,
  patient: '',
  firstImageMs: null,
  firstLosslessMs: null,
};

window.viewerState = { ready: false };

// ---- formatting --------------------------------------------------------------------------------------

function kb(bytes) {
  return bytes < 1024 ? `${bytes} B` : `${(bytes / 1024).toFixed(1)} KB`;
}

function ms(t) {
  return t >= 1000 ? `${(t / 1000).toFixed(2)} s` : `${Math.round(t)} ms`;
}

function plural(n, word) {
  return `${n} ${word}${n === 1 ? '' : 's'}`;
}

// Person Name: 'Family^Given^Middle' -> 'Family, Given Middle'.
function personName(pn) {
  return String(pn ?? '').replace('^', ', ').replaceAll('^', ' ').trim();
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === 'class') node.className = v;
    else if (k.startsWith('on')) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  node.append(...children.filter((c) => c !== null && c !== undefined));
  return node;
}

function setUrl(changes) {
  for (const [k, v] of Object.entries(changes)) {
    if (v === null || v === undefined) params.delete(k);
    else params.set(k, v);
  }
  history.replaceState(null, '', `?${params}`);
}

// ---- study list --------------------------------------------------------------------------------------

async function showStudyList() {
  $('list-view').hidden = false;
  $('root').textContent = web.root;
  const list = $('studies');
  list.textContent = 'Loading…';
  try {
    const studies = await web.studies();
    list.textContent = studies.length ? '' : 'No studies yet: store some with STOW-RS.';
    for (const s of studies) {
      const uid = value(s, 'StudyInstanceUID');
      const date = value(s, 'StudyDate', '');
      const href = `?${new URLSearchParams({ study: uid, link: view.link, mode: view.mode })}`;
      list.append(el('a', { class: 'study', role: 'listitem', href, 'data-study': uid },
        el('strong', {}, personName(value(s, 'PatientName')) || '(no name)'),
        el('span', {}, value(s, 'StudyDescription', '') || '(no description)'),
        el('span', { class: 'muted' }, [
          values(s, 'ModalitiesInStudy').join('/'),
          date && `${date.slice(0, 4)}-${date.slice(4, 6)}-${date.slice(6, 8)}`,
          `${value(s, 'NumberOfStudyRelatedSeries', '?')} series`,
          plural(value(s, 'NumberOfStudyRelatedInstances', '?'), 'image'),
          `ID ${value(s, 'PatientID', '')}`,
        ].filter(Boolean).join(' · '))));
    }
    window.viewerState = { ready: true, view: 'list', studies: studies.length };
  } catch (error) {
    list.textContent = `Cannot list studies: ${error.message}`;
    window.viewerState = { ready: true, view: 'list', error: error.message };
  }
}

// ---- viewer ------------------------------------------------------------------------------------------

function number(v, fallback) {
  const n = Number(v);
  return Number.isFinite(n) ? n : fallback;
}

// One slice per frame, ordered by Instance Number, then position along the normal (z as a fallback).
function slicesOf(metadata) {
  const sorted = [...metadata].sort((a, b) =>
    number(value(a, 'InstanceNumber'), 0) - number(value(b, 'InstanceNumber'), 0) ||
    number(values(a, 'ImagePositionPatient')[2], 0) - number(values(b, 'ImagePositionPatient')[2], 0));
  const slices = [];
  for (const m of sorted) {
    if (!value(m, 'Rows')) continue; // no pixel data
    const url = web.instanceUrl(view.study, view.series, value(m, 'SOPInstanceUID'));
    const frames = number(value(m, 'NumberOfFrames'), 1);
    const center = number(value(m, 'WindowCenter'), null);
    const width = number(value(m, 'WindowWidth'), null);
    for (let f = 1; f <= frames; f++) {
      slices.push({
        meta: m,
        instanceUrl: url,
        frameUrl: `${url}/frames/${f}`,
        frame: f,
        rows: value(m, 'Rows'),
        columns: value(m, 'Columns'),
        bitsAllocated: value(m, 'BitsAllocated', 16),
        signed: value(m, 'PixelRepresentation', 0) === 1,
        components: value(m, 'SamplesPerPixel', 1),
        lossyOriginal: value(m, 'LossyImageCompression', '00') === '01',
        window: center !== null && width !== null ? { center, width } : null,
      });
    }
  }
  return slices;
}

async function showViewer() {
  $('viewer-view').hidden = false;
  const series = await web.series(view.study);
  const images = series.filter((s) => !NON_IMAGE.has(value(s, 'Modality')));
  if (!view.series || !series.some((s) => value(s, 'SeriesInstanceUID') === view.series)) {
    view.series = value(images[0] ?? series[0], 'SeriesInstanceUID');
  }
  const bar = $('series-bar');
  bar.replaceChildren(el('a', { class: 'chip back', href: `?${new URLSearchParams({ link: view.link, mode: view.mode })}` }, '← Studies'));
  for (const s of series) {
    const uid = value(s, 'SeriesInstanceUID');
    const label = `${value(s, 'Modality', '')} ${value(s, 'SeriesNumber', '')} ${value(s, 'SeriesDescription', '')}`.trim();
    bar.append(el('button', {
      type: 'button', class: uid === view.series ? 'chip active' : 'chip',
      onclick: () => { setUrl({ series: uid, slice: 0 }); location.reload(); },
    }, `${label} (${value(s, 'NumberOfSeriesRelatedInstances', '?')})`));
  }
  await openSeries();
}

async function openSeries() {
  view.loader?.cancel();
  const metadata = await web.metadata(view.study, view.series);
  const slices = slicesOf(metadata);
  if (!slices.length) {
    showNoImages(metadata.length);
    return;
  }
  const first = slices[0].meta;
  view.patient = `${personName(value(first, 'PatientName'))} · ${value(first, 'Modality', '')} ${value(first, 'SeriesDescription', '')}`;
  view.geometry = { rows: slices[0].rows, columns: slices[0].columns };
  view.rescale = { slope: number(value(first, 'RescaleSlope'), 1), intercept: number(value(first, 'RescaleIntercept'), 0) };
  view.invert = value(first, 'PhotometricInterpretation') === 'MONOCHROME1';
  view.defaultWindow = slices[0].window;
  view.window = view.defaultWindow && { ...view.defaultWindow };
  view.slice = Math.min(Math.max(0, view.slice), slices.length - 1);
  view.firstImageMs = null;
  view.firstLosslessMs = null;
  view.layers = new Map();
  const slider = $('slider');
  slider.max = String(slices.length - 1);
  slider.value = String(view.slice);
  const loader = new SeriesLoader({
    slices, link: new Link(view.link), decoder, mode: view.mode,
    // A decode still in flight when the series was reloaded reports to a loader no longer shown.
    onChange: (slice, kind) => loader === view.loader && onSliceChange(slice, kind),
  });
  view.loader = loader;
  view.loader.focus(view.slice);
  redraw();
}

// A series of documents or reports (SR, KO, PR...): nothing to draw, and nothing will come.
function showNoImages(instances) {
  view.loader = null;
  $('badge').className = 'badge';
  $('badge').textContent = 'no images';
  $('ov-slice').textContent = '';
  $('stages').tBodies[0].replaceChildren();
  $('quality-text').replaceChildren();
  $('series-text').textContent = `This series has no images (${plural(instances, 'instance')} without pixel data).`;
  const canvas = $('canvas');
  canvas.getContext('2d').clearRect(0, 0, canvas.width, canvas.height);
  window.viewerState = {
    ready: true, view: 'viewer', study: view.study, series: view.series, sliceCount: 0, done: true,
  };
}

function onSliceChange(slice, kind) {
  if (slice.index === view.slice && kind === 'image' && slice.best) {
    const t = performance.now() - view.loader.started;
    view.firstImageMs ??= t;
    if (slice.best.quality !== 'lossy') view.firstLosslessMs ??= t;
    fetchLayers();
  }
  if (slice.index === view.slice || kind === 'image') scheduleRedraw();
}

// ---- drawing and the status panel ----------------------------------------------------------------------

let redrawQueued = false;

function scheduleRedraw() {
  if (redrawQueued) return;
  redrawQueued = true;
  requestAnimationFrame(() => {
    redrawQueued = false;
    redraw();
  });
}

function resizeCanvas() {
  const canvas = $('canvas');
  const box = $('viewport').getBoundingClientRect();
  const dpr = window.devicePixelRatio || 1;
  const w = Math.max(1, Math.round(box.width * dpr));
  const h = Math.max(1, Math.round(box.height * dpr));
  if (canvas.width !== w || canvas.height !== h) {
    canvas.width = w;
    canvas.height = h;
  }
}

function currentSlice() {
  return view.loader?.slices[view.slice] ?? null;
}

function redraw() {
  const slice = currentSlice();
  if (!slice) return;
  resizeCanvas();
  const best = slice.best;
  if (best && !view.window && best.image.kind === 'pixels') {
    view.window = fullWindow(best.image, view.rescale.slope, view.rescale.intercept);
    view.defaultWindow = { ...view.window };
  }
  const wl = view.window ?? { center: 0, width: 1 };
  draw($('canvas'), best?.image, view.geometry, { ...wl, ...view.rescale, invert: view.invert });
  updateOverlays(slice);
  updatePanel(slice);
  publishState(slice);
}

function badge(slice) {
  const b = $('badge');
  const best = slice.best;
  if (!best) {
    const failed = slice.stages.every((s) => s.status === 'failed');
    b.className = failed ? 'badge error' : 'badge';
    b.textContent = failed ? 'failed' : 'loading…';
    return;
  }
  const img = best.image;
  if (best.quality === 'lossless') {
    b.className = 'badge lossless';
    b.textContent = '✓ LOSSLESS';
  } else if (best.quality === 'original') {
    b.className = 'badge original';
    b.textContent = 'FULL (lossy original)';
  } else {
    b.className = 'badge lossy';
    b.textContent = `PREVIEW · lossy · ${img.width}×${img.height}`;
  }
}

function updateOverlays(slice) {
  $('ov-patient').textContent = view.patient;
  $('ov-slice').textContent = `Slice ${view.slice + 1}/${view.loader.slices.length}` +
    (slice.frame > 1 ? ` (frame ${slice.frame})` : '');
  $('ov-wl').textContent = view.window
    ? `W ${Math.round(view.window.width)} L ${Math.round(view.window.center)}` : '';
  badge(slice);
}

function updatePanel(slice) {
  const body = $('stages').tBodies[0];
  body.replaceChildren(...slice.stages.map((st) => el('tr', { class: `st-${st.status}` },
    el('td', {}, st.name, el('small', {}, st.variant)),
    el('td', {}, st.status === 'waiting' ? '—'
      : st.total ? `${kb(st.bytes)} / ${kb(st.total)}` : kb(st.bytes)),
    el('td', {}, st.ms ? ms(st.ms) : ''),
    el('td', { title: st.error }, st.status === 'failed' ? '✗' : st.status === 'done' ? '✓'
      : st.status === 'loading' ? '…' : ''))));
  const best = slice.best;
  const ladder = view.layers.get(slice.instanceUrl);
  const lines = [];
  if (best?.quality === 'lossless') lines.push('Displayed pixels are the stored image\'s, bit for bit.');
  else if (best?.quality === 'original') lines.push('Displayed pixels are the stored original, which was lossy-compressed.');
  else if (best) lines.push(`Lossy preview (${best.image.width}×${best.image.height} of ${slice.columns}×${slice.rows}); the lossless frame follows.`);
  for (const st of slice.stages) {
    for (const f of st.fallbacks) lines.push(`${st.name} fell back from ${f}`);
    if (st.error) lines.push(`${st.name} failed: ${st.error}`);
  }
  if (ladder?.frames?.[slice.frame - 1]) {
    const f = ladder.frames[slice.frame - 1];
    const last = f.layers.find((l) => l.lossless) ?? f.layers.at(-1);
    const first = f.layers[0];
    lines.push(`Master: ${f.layers.length} quality layers, ${f.levels?.length ?? '?'} resolutions; ` +
      `lossless at ${kb(last.bytes)}, first layer ${kb(first.bytes)}` +
      (first.psnr ? ` (${first.psnr.toFixed(1)} dB at full size)` : '') + '.');
  }
  $('quality-text').replaceChildren(...lines.map((l) => el('span', {}, l)));
  const sum = view.loader.summary();
  const full = sum.full === sum.lossless ? `${sum.lossless} lossless`
    : `${sum.full} in full (${sum.lossless} lossless, ${sum.full - sum.lossless} lossy originals)`;
  $('series-text').textContent = `${plural(sum.slices, 'slice')}: ${sum.previews} loaded, ${full} · ` +
    `${kb(sum.bytes)} received over ${LINKS[view.link].label}` +
    (view.firstImageMs !== null ? ` · first image ${ms(view.firstImageMs)}` : '') +
    (view.firstLosslessMs !== null
      ? ` · ${slice.best?.quality === 'original' ? 'full image' : 'lossless'} ${ms(view.firstLosslessMs)}` : '');
}

let publishedImage = null;

function publishState(slice) {
  const best = slice.best;
  const image = best?.image;
  const state = {
    ready: true,
    view: 'viewer',
    study: view.study,
    series: view.series,
    slice: view.slice,
    sliceCount: view.loader.slices.length,
    frameUrl: slice.frameUrl,
    rows: slice.rows,
    columns: slice.columns,
    link: view.link,
    mode: view.mode,
    decoder: decoder.available ? 'openjpeg-wasm' : 'server',
    decoderProblem: decoder.reason,
    stage: best?.stage ?? null,
    quality: best?.quality ?? null,
    lossless: best?.quality === 'lossless',
    bytes: best?.bytes ?? 0,
    width: image?.width ?? 0,
    height: image?.height ?? 0,
    history: [...slice.history],
    stages: slice.stages.map((s) => ({ ...s })),
    window: view.window && { ...view.window },
    done: slice.next >= slice.stages.length && !slice.busy,
    firstImageMs: view.firstImageMs,
    firstLosslessMs: view.firstLosslessMs,
    pixelsSha256: null,
    checksum: null,
  };
  if (image?.kind === 'pixels') {
    state.checksum = image.checksum ??= fnv1a(image.pixels);
    state.pixelsSha256 = image.sha256 ?? null;
    if (image.sha256 === undefined && publishedImage !== image) {
      publishedImage = image;
      sha256Hex(image.pixels).then((h) => {
        image.sha256 = h;
        if (currentSlice()?.best?.image === image) publishState(currentSlice());
      });
    }
  }
  window.viewerState = state;
}

// The master's fidelity ladder, asked for only once a master answered for this slice: an instance without
// one (a lossy original, or a master still being made) would answer 404 or 503, an error in the console.
async function fetchLayers() {
  const slice = currentSlice();
  if (!slice?.hasMaster || view.layers.has(slice.instanceUrl)) return;
  view.layers.set(slice.instanceUrl, null);
  const ladder = await web.layers(slice.instanceUrl);
  view.layers.set(slice.instanceUrl, ladder);
  if (currentSlice() === slice) scheduleRedraw();
}

// ---- interaction -------------------------------------------------------------------------------------

function goTo(index) {
  if (!view.loader) return;
  const n = view.loader.slices.length;
  const i = Math.min(n - 1, Math.max(0, index));
  if (i === view.slice) return;
  view.slice = i;
  $('slider').value = String(i);
  setUrl({ slice: i });
  view.loader.focus(i);
  fetchLayers();
  scheduleRedraw();
}

function bindViewer() {
  $('slider').addEventListener('input', (e) => goTo(Number(e.target.value)));
  $('prev').addEventListener('click', () => goTo(view.slice - 1));
  $('next').addEventListener('click', () => goTo(view.slice + 1));
  let wheel = 0;
  $('viewport').addEventListener('wheel', (e) => {
    e.preventDefault();
    wheel += e.deltaY;
    const steps = Math.trunc(wheel / 100); // one slice per mouse-wheel notch
    if (steps) {
      wheel -= steps * 100;
      goTo(view.slice + steps);
    }
  }, { passive: false });
  window.addEventListener('keydown', (e) => {
    if (e.target.tagName === 'SELECT' || e.target.tagName === 'INPUT') return;
    if (e.key === 'ArrowUp' || e.key === 'ArrowLeft' || e.key === 'PageUp') goTo(view.slice - 1);
    if (e.key === 'ArrowDown' || e.key === 'ArrowRight' || e.key === 'PageDown') goTo(view.slice + 1);
  });
  // Window/level by dragging: horizontal changes the width, vertical the level (center).
  const vp = $('viewport');
  let drag = null;
  vp.addEventListener('pointerdown', (e) => {
    if (!view.window) return;
    drag = { x: e.clientX, y: e.clientY, window: { ...view.window } };
    vp.setPointerCapture(e.pointerId);
  });
  vp.addEventListener('pointermove', (e) => {
    if (!drag) return;
    const span = Math.max(view.defaultWindow?.width ?? 400, 100);
    const k = span / 300;
    view.window = {
      width: Math.max(1, drag.window.width + (e.clientX - drag.x) * k),
      center: drag.window.center + (e.clientY - drag.y) * k,
    };
    scheduleRedraw();
  });
  const end = () => { drag = null; };
  vp.addEventListener('pointerup', end);
  vp.addEventListener('pointercancel', end);
  vp.addEventListener('dblclick', resetWindow);
  $('reset-wl').addEventListener('click', resetWindow);
  $('reload').addEventListener('click', () => openSeries());
  new ResizeObserver(() => scheduleRedraw()).observe(vp);
}

function resetWindow() {
  view.window = view.defaultWindow && { ...view.defaultWindow };
  scheduleRedraw();
}

function bindControls() {
  const link = $('link');
  for (const [k, v] of Object.entries(LINKS)) link.append(el('option', { value: k }, v.label));
  link.value = view.link;
  const mode = $('mode');
  for (const [k, v] of Object.entries(MODES)) mode.append(el('option', { value: k }, v.label));
  mode.value = view.mode;
  const changed = () => {
    view.link = link.value;
    view.mode = mode.value;
    setUrl({ link: view.link, mode: view.mode });
    for (const a of document.querySelectorAll('a.study, a.back')) {
      const u = new URL(a.href);
      u.searchParams.set('link', view.link);
      u.searchParams.set('mode', view.mode);
      a.href = u.href;
    }
    if (view.loader) openSeries(); // start again, so the difference can be felt
  };
  link.addEventListener('change', changed);
  mode.addEventListener('change', changed);
}

async function main() {
  bindControls();
  const forceServer = params.get('decoder') === 'server';
  if (forceServer) decoder.reason = 'disabled by ?decoder=server';
  else await decoder.start('codec/');
  $('decoder').textContent = decoder.available ? 'decoder: OpenJPEG (WebAssembly)' : 'decoder: server (rendered / uncompressed)';
  $('decoder').title = decoder.reason || 'JPEG 2000 is decoded in this page';
  $('decoder-note').textContent = decoder.available
    ? 'JPEG 2000 is decoded in this page by OpenJPEG (WebAssembly).'
    : `No JPEG 2000 decoder in this page (${decoder.reason}): previews are rendered by the server, ` +
      'lossless frames come uncompressed.';
  if (!view.study) return showStudyList();
  bindViewer();
  try {
    await showViewer();
  } catch (error) {
    $('series-text').textContent = `Cannot open the series: ${error.message}`;
    window.viewerState = { ready: true, view: 'viewer', error: error.message };
  }
}

main();
