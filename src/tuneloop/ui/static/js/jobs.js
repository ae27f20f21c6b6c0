// Jobs: every fine-tuning job with its status, filtered by status, refreshed every few seconds.
import { el, every, fmtDuration, fmtNumber, fmtTime, listAll, statusBadge } from "./common.js";

const filter = document.getElementById("status-filter");
const body = document.querySelector("#jobs-table tbody");
filter.value = new URLSearchParams(location.search).get("status") ?? "";

function row(job) {
  const end = job.finished_at ?? (["running", "validating_files", "queued"].includes(job.status) ? Date.now() / 1000 : null);
  return el(
    "tr",
    { "data-job-id": job.id, "data-status": job.status },
    el("td", {}, el("a", { href: `/ui/jobs/${encodeURIComponent(job.id)}` }, job.id)),
    el("td", {}, statusBadge(job.status)),
    el("td", {}, job.model),
    el("td", {}, job.user_provided_suffix ?? "—"),
    el("td", {}, fmtTime(job.created_at)),
    el("td", {}, end ? fmtDuration(end - job.created_at) : "—"),
    el("td", { class: "num" }, fmtNumber(job.trained_tokens)),
    el("td", { class: "mono" }, job.fine_tuned_model ?? "—"),
  );
}

async function refresh() {
  const jobs = await listAll("/fine_tuning/jobs", 1000);
  const shown = filter.value ? jobs.filter((j) => j.status === filter.value) : jobs;
  body.replaceChildren(...shown.map(row));
  document.getElementById("jobs-empty").hidden = shown.length > 0;
}

filter.addEventListener("change", () => {
  const url = new URL(location.href);
  if (filter.value) url.searchParams.set("status", filter.value);
  else url.searchParams.delete("status");
  history.replaceState(null, "", url);
  refresh();
});
every(3000, refresh);
