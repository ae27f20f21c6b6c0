// New job: model, files and hyperparameters; the API's own error is shown next to the field it names.
import { api, clearErrors, fillSelect, listAll, modelOptions, pageError, showError } from "./common.js";

const form = document.getElementById("job-form");
const query = new URLSearchParams(location.search);

/** A form value as the API takes it: a number when it reads as one, else the text (the API says what is wrong). */
function value(text) {
  const trimmed = text.trim();
  return /^-?\d+(\.\d+)?(e-?\d+)?$/i.test(trimmed) ? Number(trimmed) : trimmed;
}

async function load() {
  const [models, files] = await Promise.all([modelOptions(), listAll("/files?purpose=fine-tune")]);
  fillSelect(form.elements.model, models, { chosen: query.get("model") });
  const options = files.map((f) => ({ value: f.id, label: `${f.filename} (${f.id})` }));
  fillSelect(form.elements.training_file, options, { empty: "— choose a file —", chosen: query.get("training_file") });
  fillSelect(form.elements.validation_file, options, { empty: "none" });
}

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  clearErrors(form);
  const f = form.elements;
  const body = { model: f.model.value, training_file: f.training_file.value, training_method: f.training_method.value };
  if (f.validation_file.value) body.validation_file = f.validation_file.value;
  if (f.suffix.value.trim()) body.suffix = f.suffix.value.trim();
  if (f.seed.value.trim()) body.seed = value(f.seed.value);
  const type = f.method.value;
  const hyperparameters = {};
  for (const name of ["n_epochs", "batch_size", "learning_rate_multiplier", ...(type === "dpo" ? ["beta"] : [])]) {
    if (f[name].value.trim()) hyperparameters[name] = value(f[name].value);
  }
  body.method = { type, [type]: { hyperparameters } }; // OpenAI's method form
  const button = form.querySelector("button[type=submit]");
  button.disabled = true;
  try {
    const job = await api("/fine_tuning/jobs", { method: "POST", json: body });
    location.assign(`/ui/jobs/${encodeURIComponent(job.id)}`);
  } catch (error) {
    // "method.dpo.hyperparameters.beta" is shown at the field of "hyperparameters.beta"
    if (error.param) error.param = error.param.replace(/^method\.(supervised|dpo)\.(?=hyperparameters\.)/, "");
    showError(error, form);
    button.disabled = false;
  }
});

const showBeta = () => (document.getElementById("beta-field").hidden = form.elements.method.value !== "dpo");
form.elements.method.addEventListener("change", showBeta);
showBeta();
load().catch((e) => pageError(e.message));
