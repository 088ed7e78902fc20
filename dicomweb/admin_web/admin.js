// The /admin/ page: storage economics from GET {root}/stats, what each lifecycle rule would save (GET
// {root}/lifecycle) and the QA of recent lossy derivations (GET {root}/lifecycle/qa), drawn as inline SVG.
// Plain ES module, no build step and no charting library: a few bar and line charts are less code than
// loading one. Every chart has a title and a table beside it with the same numbers (data-value holds the
// raw number the API gave, for scripts and the tests).

import config from "./config.js";

const ROOT = (config.publicUrl || window.location.origin) + config.root;
const TOKEN_KEY = "dicomweb-admin-token";
const SVG = "http://www.w3.org/2000/svg";
const $ = (id) => document.getElementById(id);

// ---- formatting --------------------------------------------------------------------------------------

const UNITS = ["B", "kB", "MB", "GB", "TB", "PB"];

// Decimal units, as storage is sold (and priced): 1 TB = 10^12 bytes.
export function formatBytes(n) {
  let value = Number(n) || 0;
  let unit = 0;
  while (Math.abs(value) >= 1000 && unit < UNITS.length - 1) {
    value /= 1000;
    unit += 1;
  }
  return unit === 0 ? `${value.toFixed(0)} B` : `${value.toFixed(value < 10 ? 2 : 1)} ${UNITS[unit]}`;
}

function formatMoney(amount, currency) {
  const small = amount !== 0 && Math.abs(amount) < 1;
  const options = small ? { maximumSignificantDigits: 3 } : { minimumFractionDigits: 2, maximumFractionDigits: 2 };
  try {
    return new Intl.NumberFormat("en-US", { style: "currency", currency, ...options }).format(amount);
  } catch {
    // A currency setting that is not an ISO 4217 code: the number and the setting as given.
    return `${new Intl.NumberFormat("en-US", options).format(amount)} ${currency}`;
  }
}

const formatRatio = (r) => (r === null || r === undefined ? "–" : `${r.toFixed(2)} : 1`);
const formatPercent = (p) => (p === null || p === undefined ? "–" : `${p.toFixed(1)} %`);
const formatCount = (n) => new Intl.NumberFormat("en-US").format(n);
const formatDb = (db) => (db === null || db === undefined ? "identical" : `${db.toFixed(1)} dB`);
const modalityName = (m) => m || "(none)";

// ---- requests ----------------------------------------------------------------------------------------

function token() {
  return sessionStorage.getItem(TOKEN_KEY) || "";
}

async function getJson(path) {
  const headers = { Accept: "application/json" };
  if (token()) headers.Authorization = `Bearer ${token()}`;
  const response = await fetch(ROOT + path, { headers, cache: "no-store" });
  let body = null;
  try {
    body = await response.json();
  } catch {
    body = null;
  }
  return { status: response.status, body };
}

// ---- drawing -----------------------------------------------------------------------------------------

function el(name, attrs = {}, children = []) {
  const node = document.createElementNS(SVG, name);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
  for (const child of children) node.append(child);
  return node;
}

function niceMax(value) {
  if (value <= 0) return 1;
  const step = 10 ** Math.floor(Math.log10(value));
  for (const m of [1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10]) if (m * step >= value) return m * step;
  return 10 * step;
}

let chartCount = 0;

// A chart's frame: an <svg role="img"> named by its <title>, with a y axis, gridlines and a legend.
function frame(title, series, max, format, width = 1000, height = 260) {
  const id = `chart-${(chartCount += 1)}`;
  const margin = { left: 78, right: 30, top: 30, bottom: 46 };
  const svg = el("svg", { viewBox: `0 0 ${width} ${height}`, role: "img", "aria-labelledby": id });
  const titleNode = el("title", { id });
  titleNode.textContent = title;
  svg.append(titleNode);
  const plot = { x: margin.left, y: margin.top, w: width - margin.left - margin.right, h: height - margin.top - margin.bottom };
  for (let i = 0; i <= 4; i += 1) {
    const y = plot.y + plot.h - (plot.h * i) / 4;
    svg.append(el("line", { class: "axis", x1: plot.x, x2: plot.x + plot.w, y1: y, y2: y }));
    const label = el("text", { x: plot.x - 6, y: y + 4, "text-anchor": "end" });
    label.textContent = format((max * i) / 4);
    svg.append(label);
  }
  const legend = el("g", { class: "legend" });
  let x = plot.x;
  for (const s of series) {
    legend.append(el("rect", { x, y: 6, width: 12, height: 12, class: s.cls }));
    const text = el("text", { x: x + 16, y: 16 });
    text.textContent = s.name;
    legend.append(text);
    x += 28 + 7.5 * s.name.length;
  }
  svg.append(legend);
  const scale = (v) => (plot.h * v) / max;
  return { svg, plot, scale };
}

// Grouped bars: one group per category, one bar per series. Bars carry class "bar", data-category,
// data-series and data-value; each has a <title> (a tooltip, and a name for screen readers).
function barChart(container, { title, categories, series, value, format, clsOf, width = 1000 }) {
  const max = niceMax(Math.max(0, ...categories.flatMap((c) => series.map((s) => value(c, s.key)))));
  const { svg, plot, scale } = frame(title, clsOf ? [] : series, max, format, width, width === 1000 ? 260 : 300);
  const groupWidth = plot.w / Math.max(categories.length, 1);
  const barWidth = Math.min(60, (groupWidth * 0.8) / series.length);
  categories.forEach((category, i) => {
    const start = plot.x + i * groupWidth + (groupWidth - barWidth * series.length) / 2;
    series.forEach((s, j) => {
      const v = value(category, s.key);
      const h = scale(v);
      const bar = el("rect", {
        class: `bar ${clsOf ? clsOf(category, s.key) : s.cls}`,
        x: start + j * barWidth,
        y: plot.y + plot.h - h,
        width: Math.max(barWidth - 2, 1),
        height: Math.max(h, 0),
        "data-category": category.label,
        "data-series": s.key,
        "data-value": String(v),
      });
      const tip = el("title");
      tip.textContent = `${category.label}, ${s.name}: ${format(v)}`;
      bar.append(tip);
      svg.append(bar);
    });
    const label = el("text", { x: plot.x + (i + 0.5) * groupWidth, y: plot.y + plot.h + 16, "text-anchor": "middle" });
    label.textContent = category.label;
    svg.append(label);
  });
  container.replaceChildren(svg);
}

// Lines over the months (x: evenly spaced labels, at most about 12 shown).
function lineChart(container, { title, labels, series, format }) {
  const max = niceMax(Math.max(0, ...series.flatMap((s) => s.values)));
  const { svg, plot, scale } = frame(title, series, max, format);
  const step = labels.length > 1 ? plot.w / (labels.length - 1) : 0;
  const xOf = (i) => plot.x + (labels.length > 1 ? i * step : plot.w / 2);
  const every = Math.max(1, Math.ceil(labels.length / 12));
  labels.forEach((label, i) => {
    if (i % every !== 0 && i !== labels.length - 1) return;
    const text = el("text", { x: xOf(i), y: plot.y + plot.h + 16, "text-anchor": "middle" });
    text.textContent = label;
    svg.append(text);
  });
  for (const s of series) {
    const points = s.values.map((v, i) => `${xOf(i)},${plot.y + plot.h - scale(v)}`).join(" ");
    svg.append(el("polyline", { class: `line ${s.cls}`, points, "data-series": s.key }));
    s.values.forEach((v, i) => {
      const dot = el("circle", { class: s.cls, cx: xOf(i), cy: plot.y + plot.h - scale(v), r: 3, "data-value": String(v) });
      const tip = el("title");
      tip.textContent = `${labels[i]}, ${s.name}: ${format(v)}`;
      dot.append(tip);
      svg.append(dot);
    });
  }
  container.replaceChildren(svg);
}

// A table; each column is [heading, (row) => raw value, (raw) => text]. Cells keep the raw value in
// data-value, and data-column names the column.
function table(container, { caption, columns, rows, footer }) {
  const t = document.createElement("table");
  if (caption) t.createCaption().textContent = caption;
  const head = t.createTHead().insertRow();
  for (const [name] of columns) {
    const th = document.createElement("th");
    th.scope = "col";
    th.textContent = name;
    head.append(th);
  }
  const fill = (section, row) => {
    const tr = section.insertRow();
    for (const [name, get, show] of columns) {
      const raw = get(row);
      const td = tr.insertCell();
      td.textContent = show ? show(raw) : String(raw);
      td.dataset.column = name;
      if (raw !== null && raw !== undefined) td.dataset.value = String(raw);
    }
  };
  const body = t.createTBody();
  for (const row of rows) fill(body, row);
  if (footer) fill(t.createTFoot(), footer);
  container.replaceChildren(t);
}

function empty(container, text) {
  const p = document.createElement("p");
  p.className = "empty";
  p.textContent = text;
  container.replaceChildren(p);
}

// ---- the sections ------------------------------------------------------------------------------------

const SERIES = {
  received: { key: "received_bytes", name: "as received", cls: "s-received" },
  stored: { key: "stored_bytes", name: "stored now", cls: "s-stored" },
  uncompressed: { key: "uncompressed_bytes", name: "uncompressed", cls: "s-uncompressed" },
};

function cards(stats) {
  const { totals, money, currency, projection, caches } = stats;
  const five = projection.length ? projection[projection.length - 1].cumulative_saving : 0;
  const items = [
    ["Stored now", formatBytes(totals.stored_bytes), `${formatCount(totals.studies)} studies, ${formatCount(totals.instances)} instances`],
    ["As received", formatBytes(totals.received_bytes), `${formatRatio(totals.received_ratio)} against stored`],
    ["Uncompressed", formatBytes(totals.uncompressed_bytes), `${formatRatio(totals.uncompressed_ratio)} against stored`],
    ["Saving per month", formatMoney(money.saving_per_month, currency), `${formatPercent(money.saving_percent)} of storing as received`],
    ["Saving over five years", formatMoney(five, currency), `at ${(stats.yearly_growth * 100).toFixed(0)} % growth a year`],
    ["Caches", formatBytes(caches.bytes), "disk not counted as stored"],
  ];
  $("cards").replaceChildren(
    ...items.map(([label, value, sub]) => {
      const card = document.createElement("div");
      card.className = "card";
      card.innerHTML = '<div class="label"></div><div class="value"></div><div class="sub"></div>';
      card.children[0].textContent = label;
      card.children[1].textContent = value;
      card.children[2].textContent = sub;
      return card;
    }),
  );
}

function byModality(stats) {
  const rows = stats.by_modality;
  const categories = rows.map((r) => ({ label: modalityName(r.modality), row: r }));
  barChart($("modality-chart"), {
    title: "Bytes as received, stored now and uncompressed, per modality",
    categories,
    series: [SERIES.received, SERIES.stored, SERIES.uncompressed],
    value: (c, key) => c.row[key],
    format: formatBytes,
  });
  const money = (v) => formatMoney(v, stats.currency);
  table($("modality-table"), {
    caption: "Per modality",
    columns: [
      ["Modality", (r) => r.modality, modalityName],
      ["Studies", (r) => r.studies, formatCount],
      ["Instances", (r) => r.instances, formatCount],
      ["As received", (r) => r.received_bytes, formatBytes],
      ["Stored now", (r) => r.stored_bytes, formatBytes],
      ["Uncompressed", (r) => r.uncompressed_bytes, formatBytes],
      ["Received : stored", (r) => r.received_ratio, formatRatio],
      ["Uncompressed : stored", (r) => r.uncompressed_ratio, formatRatio],
      ["Saving per month", (r) => r.saving_per_month, money],
    ],
    rows,
    footer: { ...stats.totals, modality: "Total" },
  });
}

function growth(stats) {
  const months = stats.by_month;
  let received = 0;
  let stored = 0;
  const rows = months.map((m) => {
    received += m.received_bytes;
    stored += m.stored_bytes;
    return { ...m, cumulative_received: received, cumulative_stored: stored };
  });
  lineChart($("growth-chart"), {
    title: "Cumulative bytes as received and stored now, by month of study (else of receipt)",
    labels: rows.map((r) => r.month),
    series: [
      { key: "received", name: "as received", cls: "s-received", values: rows.map((r) => r.cumulative_received) },
      { key: "stored", name: "stored now", cls: "s-stored", values: rows.map((r) => r.cumulative_stored) },
    ],
    format: formatBytes,
  });
  table($("growth-table"), {
    caption: "Per month",
    columns: [
      ["Month", (r) => r.month],
      ["Studies", (r) => r.studies, formatCount],
      ["Instances", (r) => r.instances, formatCount],
      ["As received", (r) => r.received_bytes, formatBytes],
      ["Stored now", (r) => r.stored_bytes, formatBytes],
      ["Cumulative as received", (r) => r.cumulative_received, formatBytes],
      ["Cumulative stored", (r) => r.cumulative_stored, formatBytes],
    ],
    rows,
  });
}

function tiers(stats) {
  const { totals, prices, currency } = stats;
  const rows = [
    { label: "hot", bytes: totals.hot_bytes, price: prices.per_tb_month },
    { label: "cold", bytes: totals.cold_bytes, price: prices.cold_per_tb_month },
  ].map((r) => ({ ...r, cost: (r.bytes / prices.tb_bytes) * r.price, share: totals.stored_bytes ? (100 * r.bytes) / totals.stored_bytes : null }));
  barChart($("tier-chart"), {
    title: "Bytes stored on each tier",
    categories: rows.map((r) => ({ label: r.label, row: r })),
    series: [{ key: "bytes", name: "stored", cls: "s-stored" }],
    value: (c) => c.row.bytes,
    format: formatBytes,
    clsOf: (c) => `s-${c.label}`,
    width: 500,
  });
  table($("tier-table"), {
    caption: "Per tier",
    columns: [
      ["Tier", (r) => r.label],
      ["Stored", (r) => r.bytes, formatBytes],
      ["Share", (r) => r.share, formatPercent],
      [`Price per TB-month`, (r) => r.price, (v) => formatMoney(v, currency)],
      ["Cost per month", (r) => r.cost, (v) => formatMoney(v, currency)],
    ],
    rows,
  });
}

function moneyTable(stats) {
  const { money, currency, prices } = stats;
  table($("money-table"), {
    columns: [
      ["Storing", (r) => r.label],
      ["Per month", (r) => r.value, (v) => formatMoney(v, currency)],
    ],
    rows: [
      { label: "as received", value: money.per_month_as_received },
      { label: "as stored now", value: money.per_month_as_stored },
      { label: "uncompressed", value: money.per_month_uncompressed },
      { label: `saving (${formatPercent(money.saving_percent)})`, value: money.saving_per_month },
    ],
  });
  $("price-source").textContent =
    `At ${formatMoney(prices.per_tb_month, currency)} per TB-month (cold tier ${formatMoney(prices.cold_per_tb_month, currency)}; ` +
    `1 TB = 10^12 bytes). ${prices.source}`;
}

function projection(stats) {
  const { currency } = stats;
  const money = (v) => formatMoney(v, currency);
  barChart($("projection-chart"), {
    title: `Storage cost per year over five years at ${(stats.yearly_growth * 100).toFixed(0)} % growth a year`,
    categories: stats.projection.map((y) => ({ label: `year ${y.year}`, row: y })),
    series: [
      { key: "cost_as_received", name: "as received", cls: "s-received" },
      { key: "cost_as_stored", name: "as stored now", cls: "s-stored" },
    ],
    value: (c, key) => c.row[key],
    format: money,
  });
  table($("projection-table"), {
    caption: "Five-year projection",
    columns: [
      ["Year", (r) => r.year],
      ["As received (year end)", (r) => r.received_bytes, formatBytes],
      ["Stored (year end)", (r) => r.stored_bytes, formatBytes],
      ["Cost as received", (r) => r.cost_as_received, money],
      ["Cost as stored", (r) => r.cost_as_stored, money],
      ["Saving", (r) => r.saving, money],
      ["Cumulative saving", (r) => r.cumulative_saving, money],
    ],
    rows: stats.projection,
  });
}

function cachesTable(stats) {
  table($("cache-table"), {
    columns: [
      ["Cache", (r) => r.name],
      ["Folder (under the data folder)", (r) => r.folder],
      ["Files", (r) => r.files, formatCount],
      ["Disk", (r) => r.bytes, formatBytes],
    ],
    rows: stats.caches.folders,
    footer: { name: "Total", folder: "", files: stats.caches.folders.reduce((n, c) => n + c.files, 0), bytes: stats.caches.bytes },
  });
}

const NO_RULES = "No lifecycle rules: with a policy (DICOMWEB_LIFECYCLE), what each rule would save shows here.";

async function rules(currency) {
  const { status, body } = await getJson("/lifecycle");
  if (status !== 200 || !body || !Array.isArray(body.rules) || body.rules.length === 0) {
    $("rules-chart").replaceChildren();
    empty($("rules-table"), status === 200 || status === 404 ? NO_RULES : `${NO_RULES} (the server answered ${status})`);
    return;
  }
  const cur = body.currency || currency;
  barChart($("rules-chart"), {
    title: `Bytes now and after each rule of ${body.policy || "the policy"}`,
    categories: body.rules.map((r) => ({ label: r.name, row: r })),
    series: [
      { key: "bytes_now", name: "now", cls: "s-stored" },
      { key: "bytes_after", name: "after the rule", cls: "s-after" },
    ],
    value: (c, key) => c.row[key],
    format: formatBytes,
  });
  table($("rules-table"), {
    caption: `Policy ${body.policy || ""}`,
    columns: [
      ["Rule", (r) => r.name],
      ["Action", (r) => r.action],
      ["Studies", (r) => r.studies, formatCount],
      ["Instances", (r) => r.instances, formatCount],
      ["Now", (r) => r.bytes_now, formatBytes],
      ["After", (r) => r.bytes_after, formatBytes],
      ["Saving", (r) => r.saving_bytes, formatBytes],
      ["Saving per month", (r) => r.saving_per_month, (v) => formatMoney(v, cur)],
      ["Worst PSNR", (r) => r.worst_psnr_db, (v) => (v === null ? "–" : formatDb(v))],
      ["Worst max error", (r) => r.worst_max_error, (v) => (v === null ? "–" : String(v))],
    ],
    rows: body.rules,
  });
}

async function qa() {
  const { status, body } = await getJson("/lifecycle/qa?limit=20");
  if (status !== 200 || !body || !Array.isArray(body.studies) || body.studies.length === 0) {
    empty($("qa-table"), "No lossy derivations yet: once a lifecycle rule derives lossy copies, their QA shows here.");
    return;
  }
  table($("qa-table"), {
    columns: [
      ["Study", (r) => r.study],
      ["Instances", (r) => r.instances, formatCount],
      ["Frames", (r) => r.frames, formatCount],
      ["Ratio", (r) => r.ratio, formatRatio],
      ["Worst PSNR", (r) => r.worst_psnr_db, formatDb],
      ["Worst max error", (r) => r.worst_max_error],
      ["Worst SSIM", (r) => r.worst_ssim, (v) => v.toFixed(4)],
      ["Derived", (r) => r.derived_at, (v) => new Date(v * 1000).toISOString().slice(0, 16).replace("T", " ")],
    ],
    rows: body.studies,
  });
}

// ---- the page ----------------------------------------------------------------------------------------

function say(text) {
  $("message").textContent = text;
  $("message").hidden = !text;
}

async function load() {
  say("");
  delete document.body.dataset.loaded;
  let answer;
  try {
    answer = await getJson("/stats");
  } catch (err) {
    say(`The server cannot be reached (${err.message}).`);
    return;
  }
  const { status, body } = answer;
  if (status === 401 || status === 403) {
    $("token-form").hidden = false;
    $("main").hidden = true;
    say(
      status === 401
        ? token()
          ? "The server did not accept this token (expired or not valid): paste another one."
          : "This server needs a bearer token with the admin scope: paste one below."
        : "This token lacks the admin scope (dicomweb.admin) that storage figures need: paste another one.",
    );
    return;
  }
  if (status !== 200 || !body) {
    say(`The server answered ${status}: ${(body && body.error) || "no figures"}.`);
    return;
  }
  $("token-form").hidden = !token();
  $("main").hidden = false;
  cards(body);
  byModality(body);
  growth(body);
  tiers(body);
  moneyTable(body);
  projection(body);
  cachesTable(body);
  await Promise.all([rules(body.currency), qa()]);
  document.body.dataset.loaded = "true";
}

$("token-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const value = $("token").value.trim();
  if (value) sessionStorage.setItem(TOKEN_KEY, value);
  $("token").value = "";
  load();
});
$("forget").addEventListener("click", () => {
  sessionStorage.removeItem(TOKEN_KEY);
  load();
});
$("reload").addEventListener("click", () => load());

load();
