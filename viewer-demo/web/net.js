// Network access for the demo: a modelled slow link, and the DICOMweb requests the viewer makes.
//
// The link is simulated in the page: responses arrive from the server at full speed, and each chunk is
// handed to the viewer only when a link of the chosen rate would have delivered it. All requests share
// one link, so parallel requests split its bandwidth as they would on a real one.

export const LINKS = {
  local: { label: 'Unthrottled', bitsPerSecond: Infinity, rttMs: 0 },
  '20M': { label: '20 Mbit/s', bitsPerSecond: 20e6, rttMs: 20 },
  '2M': { label: '2 Mbit/s (mobile)', bitsPerSecond: 2e6, rttMs: 60 },
  '512k': { label: '512 kbit/s', bitsPerSecond: 512e3, rttMs: 150 },
};

export class HttpError extends Error {
  constructor(status, message) {
    super(`HTTP ${status}: ${message}`);
    this.status = status;
  }
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, Math.max(0, ms)));

export class Link {
  constructor(name) {
    this.name = name in LINKS ? name : 'local';
    this.profile = LINKS[this.name];
    this.freeAt = 0; // when the modelled link has delivered everything handed to it so far
  }

  // Time (performance.now()) at which `n` more bytes would have arrived.
  deliveryTime(n) {
    if (!Number.isFinite(this.profile.bitsPerSecond)) return 0;
    const start = Math.max(performance.now(), this.freeAt);
    this.freeAt = start + (n * 8 * 1000) / this.profile.bitsPerSecond;
    return this.freeAt;
  }

  // fetch() through the link. onProgress(received, total) is called as bytes are delivered.
  // Resolves to {status, headers, contentType, bytes: Uint8Array, ms}.
  async fetch(url, { headers = {}, signal, onProgress } = {}) {
    const t0 = performance.now();
    await sleep(this.profile.rttMs);
    const response = await fetch(url, { headers, signal });
    if (!response.ok) {
      const text = await response.text().catch(() => '');
      throw new HttpError(response.status, text.slice(0, 200));
    }
    const total = Number(response.headers.get('content-length')) || 0;
    const chunks = [];
    let received = 0;
    const reader = response.body.getReader();
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      const due = this.deliveryTime(value.length);
      if (due) await sleep(due - performance.now());
      if (signal?.aborted) throw new DOMException('aborted', 'AbortError');
      chunks.push(value);
      received += value.length;
      onProgress?.(received, total);
    }
    const bytes = new Uint8Array(received);
    let offset = 0;
    for (const c of chunks) {
      bytes.set(c, offset);
      offset += c.length;
    }
    const contentType = response.headers.get('content-type') || '';
    return { status: response.status, headers: response.headers, contentType, bytes, ms: performance.now() - t0 };
  }
}

// A media type's parameters, e.g. transfer-syntax from `image/jp2; transfer-syntax=1.2.840.10008.1.2.4.91`.
export function mediaParams(contentType) {
  const [type, ...rest] = contentType.split(';');
  const params = { type: type.trim().toLowerCase() };
  for (const p of rest) {
    const i = p.indexOf('=');
    if (i > 0) params[p.slice(0, i).trim().toLowerCase()] = p.slice(i + 1).trim().replace(/^"|"$/g, '');
  }
  return params;
}

// ---- DICOMweb (QIDO-RS and metadata go straight to the server: they are small) ------------------------

export class DicomWeb {
  constructor(root) {
    this.root = root.replace(/\/$/, '');
  }

  async json(path) {
    const response = await fetch(this.root + path, { headers: { Accept: 'application/dicom+json' } });
    if (!response.ok) throw new HttpError(response.status, await response.text());
    return response.status === 204 ? [] : response.json();
  }

  studies() {
    const fields = ['StudyDescription', 'ModalitiesInStudy', 'NumberOfStudyRelatedSeries',
      'NumberOfStudyRelatedInstances'].join(',');
    return this.json(`/studies?limit=200&includefield=${fields}`);
  }

  series(study) {
    return this.json(`/studies/${study}/series?includefield=SeriesDescription`);
  }

  metadata(study, series) {
    return this.json(`/studies/${study}/series/${series}/metadata`);
  }

  instanceUrl(study, series, sop) {
    return `${this.root}/studies/${study}/series/${series}/instances/${sop}`;
  }

  // The fidelity ladder measured at ingest ({frames: [{levels, layers: [{bytes, psnr, lossless}]}]}),
  // or null while the master is pending or when the server has no such resource.
  async layers(instanceUrl) {
    try {
      const response = await fetch(`${instanceUrl}/layers`, { headers: { Accept: 'application/json' } });
      return response.ok ? await response.json() : null;
    } catch {
      return null;
    }
  }
}

// ---- DICOM JSON helpers -------------------------------------------------------------------------------

export const TAG = {
  PatientName: '00100010', PatientID: '00100020', StudyDate: '00080020', StudyDescription: '00081030',
  StudyInstanceUID: '0020000D', SeriesInstanceUID: '0020000E', SOPInstanceUID: '00080018',
  Modality: '00080060', ModalitiesInStudy: '00080061', SeriesDescription: '0008103E', SeriesNumber: '00200011',
  NumberOfStudyRelatedSeries: '00201206', NumberOfStudyRelatedInstances: '00201208',
  NumberOfSeriesRelatedInstances: '00201209', InstanceNumber: '00200013', ImagePositionPatient: '00200032',
  NumberOfFrames: '00280008', Rows: '00280010', Columns: '00280011', SamplesPerPixel: '00280002',
  PhotometricInterpretation: '00280004', BitsAllocated: '00280100', BitsStored: '00280101',
  PixelRepresentation: '00280103', WindowCenter: '00281050', WindowWidth: '00281051',
  RescaleIntercept: '00281052', RescaleSlope: '00281053', LossyImageCompression: '00282110',
};

export function values(item, keyword) {
  return item?.[TAG[keyword]]?.Value ?? [];
}

export function value(item, keyword, fallback = undefined) {
  const v = values(item, keyword)[0];
  if (v === undefined || v === null) return fallback;
  if (typeof v === 'object' && 'Alphabetic' in v) return v.Alphabetic;
  return v;
}
