// Files: upload (the validator's report shown at once, before any job), list, check, download, delete.
import { api, clearErrors, download, el, fillSelect, fmtDuration, fmtNumber, fmtTime, listAll, modelOptions, pageError, showError } from "./common.js";

const form = document.getElementById("upload-form");
const modelPick = document.getElementById("check-model");

function table(head, rows) {
  return el(
    "div",
    { class: "table-wrap" },
    el("table", {}, el("thead", {}, el("tr", {}, ...head.map((h) => el("th", { scope: "col" }, h)))),
      el("tbody", {}, ...rows.map((r) => el("tr", {}, ...r.map((c) => el("td", {}, c)))))),
  );
}

function distRow(name, d) {
  return d ? [name, fmtNumber(d.min), fmtNumber(d.median), fmtNumber(d.mean, 3), fmtNumber(d.p95), fmtNumber(d.max)] : null;
}

function issueRows(issues) {
  return issues.map((i) => [i.line === null ? "file" : String(i.line), i.code, i.message]);
}

function renderReport(report, file) {
  const section = document.getElementById("report");
  section.hidden = false;
  const parts = [
    el("p", { class: report.ok ? "ok" : "bad", id: "report-verdict" },
      report.ok ? `✓ ${file.filename}: ${report.n_examples} examples in the ${report.format} format, no errors.`
        : `✗ ${file.filename}: ${report.n_errors} error(s) in ${report.n_examples} example(s).`),
  ];
  if (report.errors.length) {
    parts.push(el("h3", {}, "Errors"), table(["Line", "Code", "Message"], issueRows(report.errors)));
  }
  if (report.warnings.length) {
    parts.push(el("h3", {}, "Warnings"), table(["Line", "Code", "Message"], issueRows(report.warnings)));
  }
  const stats = report.stats;
  if (stats?.total_tokens) {
    parts.push(
      el("h3", {}, `Tokens (${report.model}'s tokenizer, limit ${stats.limit.toLocaleString()})`),
      table(["Per example", "min", "median", "mean", "p95", "max"],
        [distRow("total tokens", stats.total_tokens), distRow("trained tokens", stats.trained_tokens),
         distRow("messages", stats.messages_per_example)].filter(Boolean)),
      el("p", {}, `${stats.dataset_tokens.toLocaleString()} tokens in all; ${stats.n_truncated} example(s) over the limit.`),
    );
  }
  const estimate = report.estimate;
  if (estimate) {
    parts.push(
      el("h3", {}, "Estimate with auto epochs"),
      el("p", { id: "report-estimate" },
        `${estimate.n_epochs} epochs (${estimate.epochs_rule}); ${estimate.trained_tokens.toLocaleString()} trained tokens; `,
        `about ${estimate.seconds === null ? "—" : fmtDuration(estimate.seconds)} on this machine.`),
    );
  }
  if (report.ok && file.purpose === "fine-tune") {
    parts.push(el("a", { class: "button", href: `/ui/jobs/new?training_file=${encodeURIComponent(file.id)}` }, "Start a job with this file"));
  }
  document.getElementById("report-title").textContent = `Validation report: ${file.filename} (${file.id})`;
  document.getElementById("report-body").replaceChildren(...parts);
  section.scrollIntoView({ block: "nearest" });
}

async function check(file) {
  const slot = form.querySelector('[data-error-for="file"]');
  const report = await api(`/files/${encodeURIComponent(file.id)}/validation?model=${encodeURIComponent(modelPick.value)}`);
  renderReport(report, file);
  if (!report.ok) {
    const first = report.errors[0];
    slot.textContent = `${report.n_errors} error(s): ${first.line ? `line ${first.line}: ` : ""}${first.message}`;
  }
}

async function refreshList() {
  const files = await listAll("/files");
  document.querySelector("#files-table tbody").replaceChildren(
    ...files.map((f) =>
      el("tr", { "data-file-id": f.id },
        el("td", { class: "mono" }, f.id),
        el("td", {}, f.filename),
        el("td", {}, f.purpose),
        el("td", { class: "num" }, fmtNumber(f.bytes)),
        el("td", {}, fmtTime(f.created_at)),
        el("td", { class: "actions" },
          f.filename.endsWith(".jsonl") ? el("button", { type: "button", onclick: () => check(f).catch((e) => pageError(e.message)) }, "Check") : null,
          el("button", { type: "button", onclick: () => download(f.id, f.filename).catch((e) => pageError(e.message)) }, "Download"),
          el("button", { type: "button", class: "danger", onclick: () => remove(f) }, "Delete"))),
    ),
  );
}

async function remove(file) {
  if (!confirm(`Delete ${file.filename} (${file.id})?`)) return;
  try {
    await api(`/files/${encodeURIComponent(file.id)}`, { method: "DELETE" });
    await refreshList();
  } catch (error) {
    pageError(error.message);
  }
}

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  clearErrors(form);
  const data = new FormData();
  const chosen = form.elements.file.files[0];
  if (chosen) data.append("file", chosen); // none chosen: the API's own error says so
  data.append("purpose", form.elements.purpose.value);
  const button = form.querySelector("button[type=submit]");
  button.disabled = true;
  button.textContent = "Uploading…";
  try {
    const file = await api("/files", { method: "POST", form: data });
    await refreshList();
    if (file.filename.endsWith(".jsonl")) {
      button.textContent = "Checking…";
      await check(file);
    }
  } catch (error) {
    showError(error, form);
  } finally {
    button.disabled = false;
    button.textContent = "Upload and check";
  }
});

modelOptions()
  .then((options) => fillSelect(modelPick, options.filter((o) => !o.value.startsWith("ft:"))))
  .catch((e) => pageError(e.message));
refreshList().catch((e) => pageError(e.message));
