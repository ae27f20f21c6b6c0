// Models: base models, fine-tuned models (with their jobs) and every job's checkpoints.
import { api, el, fmtNumber, fmtTime, listAll, pageError } from "./common.js";

const play = (id) => el("a", { href: `/ui/playground?model=${encodeURIComponent(id)}` }, "Playground");
const jobLink = (id) => el("a", { href: `/ui/jobs/${encodeURIComponent(id)}` }, id);

async function load() {
  const [models, jobs] = await Promise.all([api("/models"), listAll("/fine_tuning/jobs", 1000)]);
  const jobOf = new Map(jobs.filter((j) => j.fine_tuned_model).map((j) => [j.fine_tuned_model, j.id]));
  const base = models.data.filter((m) => !m.id.startsWith("ft:"));
  const tuned = models.data.filter((m) => m.id.startsWith("ft:")).sort((a, b) => b.created - a.created);
  document.querySelector("#base-models tbody").replaceChildren(
    ...base.map((m) => el("tr", {}, el("td", { class: "mono" }, m.id), el("td", {}, fmtTime(m.created)), el("td", {}, play(m.id)))),
  );
  document.querySelector("#ft-models tbody").replaceChildren(
    ...tuned.map((m) =>
      el("tr", {}, el("td", { class: "mono" }, m.id), el("td", {}, m.parent ?? "—"),
        el("td", {}, jobOf.has(m.id) ? jobLink(jobOf.get(m.id)) : "—"), el("td", {}, fmtTime(m.created)), el("td", {}, play(m.id))),
    ),
  );
  const withCheckpoints = jobs.filter((j) => ["succeeded", "running", "paused", "cancelled", "failed"].includes(j.status));
  const lists = await Promise.all(
    withCheckpoints.map((j) => api(`/fine_tuning/jobs/${encodeURIComponent(j.id)}/checkpoints?limit=100`).then((r) => r.data)),
  );
  document.querySelector("#checkpoints tbody").replaceChildren(
    ...lists.flat().map((c) =>
      el("tr", {}, el("td", { class: "mono" }, c.fine_tuned_model_checkpoint), el("td", {}, jobLink(c.fine_tuning_job_id)),
        el("td", { class: "num" }, String(c.step_number)), el("td", { class: "num" }, fmtNumber(c.metrics?.train_loss)),
        el("td", { class: "num" }, fmtNumber(c.metrics?.valid_loss ?? c.metrics?.full_valid_loss)),
        el("td", {}, play(c.fine_tuned_model_checkpoint))),
    ),
  );
}

load().catch((e) => pageError(e.message));
