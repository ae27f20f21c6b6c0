// Evals: the reports `tuneloop eval` uploaded (files with purpose "evals"), as tables, bars and loss curves.
import { drawLines } from "./charts.js";
import { api, el, fillSelect, fmtNumber, fmtTime, listAll, pageError } from "./common.js";

const pick = document.getElementById("report-pick");
const target = document.getElementById("eval-report");

function bars(title, candidates, value, format) {
  const values = candidates.map(value);
  const top = Math.max(...values.filter((v) => v !== null && v !== undefined), 0) || 1;
  return el(
    "figure",
    { class: "bars" },
    el("figcaption", {}, title),
    ...candidates.map((c, i) =>
      el("div", { class: "bar-row" },
        el("span", { class: "bar-label" }, c.name),
        el("span", { class: "bar", role: "img", "aria-label": `${c.name}: ${format(values[i])}`,
          style: `--share: ${values[i] === null || values[i] === undefined ? 0 : (values[i] / top) * 100}%` }),
        el("span", { class: "bar-value" }, format(values[i]))),
    ),
  );
}

function render(report, file) {
  const cands = report.candidates;
  const metric = report.primary_metric;
  const pct = (v) => (v === null || v === undefined ? "—" : `${(v * 100).toFixed(1)}%`);
  const head = ["Candidate", "Model", metric, "prompt tokens", "completion tokens", "latency (s)", "tokens/s", "errors"];
  const parts = [
    el("p", {}, `${report.n_examples} held-out examples of ${report.data} · task ${report.task} · graders ${report.graders.join(", ")} · `,
      `baseline ${report.baseline} · ${fmtTime(report.created)} · file ${file.filename} (${file.id})`),
    el("div", { class: "table-wrap" },
      el("table", { id: "eval-table" },
        el("thead", {}, el("tr", {}, ...head.map((h) => el("th", { scope: "col" }, h)))),
        el("tbody", {}, ...cands.map((c) =>
          el("tr", {}, el("td", {}, c.name), el("td", { class: "mono" }, c.model), el("td", { class: "num" }, pct(c.primary)),
            el("td", { class: "num" }, fmtNumber(c.mean_prompt_tokens, 4)), el("td", { class: "num" }, fmtNumber(c.mean_completion_tokens, 3)),
            el("td", { class: "num" }, fmtNumber(c.mean_latency_s, 3)), el("td", { class: "num" }, fmtNumber(c.tokens_per_second, 3)),
            el("td", { class: "num" }, String(c.errors))))))),
    el("div", { class: "charts" },
      bars(metric, cands, (c) => c.primary, pct),
      bars("mean prompt tokens", cands, (c) => c.mean_prompt_tokens, (v) => fmtNumber(v, 4)),
      bars("mean latency (s)", cands, (c) => c.mean_latency_s, (v) => fmtNumber(v, 3))),
  ];
  for (const note of report.notes ?? []) parts.push(el("p", { class: "muted" }, note));
  const figures = (report.curves ?? []).map((curve) =>
    el("figure", { class: "chart", "data-points": "0" }, el("figcaption", {}, `Loss: ${curve.label}`), el("div", { class: "plot" })),
  );
  if (figures.length) parts.push(el("h2", {}, "Training curves"), el("div", { class: "charts" }, ...figures));
  target.replaceChildren(...parts);
  (report.curves ?? []).forEach((curve, i) =>
    drawLines(figures[i], curve.step, { train_loss: curve.train_loss, valid_loss: curve.valid_loss }),
  );
}

async function show(fileId, files) {
  const file = files.find((f) => f.id === fileId);
  const response = await api(`/files/${encodeURIComponent(fileId)}/content`, { raw: true });
  let report;
  try {
    report = await response.json();
  } catch {
    report = null;
  }
  if (!report || report.object !== "tuneloop.eval_report") {
    target.replaceChildren(el("p", { class: "bad" }, `${file.filename} is not a tuneloop eval report.`));
    return;
  }
  render(report, file);
}

async function load() {
  const files = await listAll("/files?purpose=evals");
  document.getElementById("evals-empty").hidden = files.length > 0;
  pick.closest(".toolbar").hidden = !files.length;
  fillSelect(pick, files.map((f) => ({ value: f.id, label: `${f.filename} · ${fmtTime(f.created_at)}` })), {
    chosen: new URLSearchParams(location.search).get("report"),
  });
  pick.onchange = () => show(pick.value, files).catch((e) => pageError(e.message));
  if (pick.value) await show(pick.value, files);
}

load().catch((e) => pageError(e.message));
