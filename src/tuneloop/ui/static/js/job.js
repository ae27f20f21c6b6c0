// Job: the resolved settings, live curves from the metrics events, events, checkpoints, result files, controls.
import { curves, drawLines, isAccuracy, isLoss, isMargin, resizeWith } from "./charts.js";
import { api, download, el, every, fmtDuration, fmtNumber, fmtTime, pageError, statusBadge } from "./common.js";

const jobId = document.getElementById("job").dataset.jobId;
const base = `/fine_tuning/jobs/${encodeURIComponent(jobId)}`;
const events = []; // oldest first
const known = new Set();
const charts = ["loss-chart", "accuracy-chart", "margin-chart"].map((id) => document.getElementById(id));
let job = null;
let lastCheckpoints = "";

/** Events newer than the newest one known (the API lists newest first; ``after`` pages to older ones). */
async function newEvents() {
  const fresh = [];
  let after = null;
  for (;;) {
    const page = await api(`${base}/events?limit=200${after ? `&after=${encodeURIComponent(after)}` : ""}`);
    const unseen = page.data.filter((e) => !known.has(e.id));
    fresh.push(...unseen);
    if (unseen.length < page.data.length || !page.has_more || !page.data.length) break;
    after = page.data[page.data.length - 1].id;
  }
  for (const e of fresh.reverse()) {
    known.add(e.id);
    events.push(e);
  }
  return fresh;
}

function fact(term, ...value) {
  return [el("dt", {}, term), el("dd", {}, ...value)];
}

function fileLink(fileId) {
  return fileId ? el("button", { type: "button", class: "link mono", onclick: () => download(fileId) }, fileId) : "—";
}

function showJob() {
  const status = document.getElementById("job-status");
  status.replaceWith(Object.assign(statusBadge(job.status), { id: "job-status" }));
  const hp = job.hyperparameters ?? {};
  const end = job.finished_at ?? Date.now() / 1000;
  document.getElementById("job-facts").replaceChildren(
    ...fact("Model", job.model),
    ...fact("Fine-tuned model", job.fine_tuned_model ?? "—"),
    ...fact("Training", job.training_method ?? "lora", job.method?.type ? ` · ${job.method.type}` : ""),
    ...fact("Epochs", String(hp.n_epochs ?? "auto")),
    ...fact("Batch size", String(hp.batch_size ?? "auto")),
    ...fact("Learning rate multiplier", String(hp.learning_rate_multiplier ?? "auto")),
    ...(job.method?.type === "dpo" ? fact("Beta (DPO)", String(job.method.dpo?.hyperparameters?.beta ?? "auto")) : []),
    ...fact("Seed", String(job.seed ?? "—")),
    ...fact("Suffix", job.user_provided_suffix ?? "—"),
    ...fact("Training file", fileLink(job.training_file)),
    ...fact("Validation file", fileLink(job.validation_file)),
    ...fact("Created", fmtTime(job.created_at)),
    ...fact("Duration", fmtDuration(end - job.created_at)),
    ...fact("Trained tokens", fmtNumber(job.trained_tokens)),
    ...fact("Estimated finish", job.estimated_finish && !job.finished_at ? fmtTime(job.estimated_finish) : "—"),
  );
  const error = document.getElementById("job-error");
  error.hidden = !job.error?.message;
  error.textContent = job.error?.message ?? "";
  document.getElementById("pause").disabled = !["queued", "running"].includes(job.status);
  document.getElementById("resume").disabled = job.status !== "paused";
  document.getElementById("cancel").disabled = ["succeeded", "failed", "cancelled"].includes(job.status);
  const results = document.getElementById("result-files");
  if (job.result_files?.length) {
    results.replaceChildren(
      ...job.result_files.map((id) =>
        el("li", {}, el("button", { type: "button", onclick: () => download(id, `${jobId}-metrics.csv`) }, `Download ${id}`)),
      ),
    );
  }
}

function showEvents() {
  document.getElementById("events").replaceChildren(
    ...events
      .slice(-300)
      .reverse()
      .map((e) =>
        el("li", { class: `level-${e.level}` }, el("time", {}, new Date(e.created_at * 1000).toLocaleTimeString()), " ", e.message),
      ),
  );
  const rows = events.filter((e) => e.type === "metrics" && e.data).map((e) => e.data);
  document.getElementById("charts-empty").hidden = rows.length > 0;
  if (!rows.length) return;
  const loss = curves(rows, isLoss);
  drawLines(charts[0], loss.steps, loss.series);
  const accuracy = curves(rows, isAccuracy);
  drawLines(charts[1], accuracy.steps, accuracy.series);
  const margin = curves(rows, isMargin);
  if (Object.keys(margin.series).length) drawLines(charts[2], margin.steps, margin.series);
}

async function showCheckpoints() {
  const list = (await api(`${base}/checkpoints?limit=100`)).data;
  const key = list.map((c) => c.id).join();
  if (key === lastCheckpoints) return;
  lastCheckpoints = key;
  document.querySelector("#checkpoints-table tbody").replaceChildren(
    ...list.map((c) =>
      el(
        "tr",
        {},
        el("td", { class: "num" }, String(c.step_number)),
        el("td", { class: "mono" }, el("a", { href: `/ui/playground?model=${encodeURIComponent(c.fine_tuned_model_checkpoint)}` }, c.fine_tuned_model_checkpoint)),
        el("td", { class: "num" }, fmtNumber(c.metrics?.train_loss)),
        el("td", { class: "num" }, fmtNumber(c.metrics?.valid_loss ?? c.metrics?.full_valid_loss)),
        el("td", { class: "num" }, fmtNumber(c.metrics?.valid_mean_token_accuracy ?? c.metrics?.full_valid_mean_token_accuracy)),
      ),
    ),
  );
}

async function refresh() {
  job = await api(base);
  showJob();
  if ((await newEvents()).length) showEvents();
  await showCheckpoints();
}

for (const action of ["pause", "resume", "cancel"]) {
  document.getElementById(action).addEventListener("click", async (event) => {
    event.target.disabled = true;
    try {
      job = await api(`${base}/${action}`, { method: "POST" });
      showJob();
    } catch (error) {
      pageError(error.message);
    }
  });
}
resizeWith(charts);
every(1500, refresh);
