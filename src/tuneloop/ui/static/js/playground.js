// Playground: one prompt to 2-3 models at once, answers streamed side by side with tokens and latency.
import { authHeaders, clearErrors, el, errorOf, fillSelect, modelOptions, pageError, showError } from "./common.js";

const form = document.getElementById("play-form");
const picks = [...document.querySelectorAll(".model-pick")];
const answers = document.getElementById("answers");
let running = null;

/** Server-sent events of a streamed response, one parsed ``data:`` payload at a time. */
async function* sseData(response) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const frame = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      const data = frame.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trim()).join("\n");
      if (data === "[DONE]") return;
      if (data) yield JSON.parse(data);
    }
  }
}

function column(model) {
  const output = el("div", { class: "answer-text", "aria-live": "polite" });
  const stats = el("p", { class: "muted stats" }, "waiting…");
  const box = el("article", { class: "answer card", "data-model": model, "data-state": "running" }, el("h2", { class: "mono" }, model), output, stats);
  return { box, output, stats };
}

async function ask(model, messages, options, signal, view) {
  const started = performance.now();
  let first = null;
  const response = await fetch("/v1/chat/completions", {
    method: "POST",
    headers: authHeaders({ "Content-Type": "application/json" }),
    body: JSON.stringify({ model, messages, stream: true, stream_options: { include_usage: true }, ...options }),
    signal,
  });
  if (!response.ok) throw await errorOf(response);
  let usage = null;
  for await (const chunk of sseData(response)) {
    if (chunk.error) throw new Error(chunk.error.message);
    const text = chunk.choices?.[0]?.delta?.content;
    if (text) {
      first ??= performance.now();
      view.output.append(text);
    }
    usage = chunk.usage ?? usage;
  }
  const seconds = (performance.now() - started) / 1000;
  const tokens = usage?.completion_tokens ?? 0;
  const decode = first === null ? null : (performance.now() - first) / 1000;
  view.stats.textContent =
    `${tokens} completion tokens · ${usage?.prompt_tokens ?? "?"} prompt tokens · first token ${first === null ? "—" : ((first - started) / 1000).toFixed(2) + " s"}` +
    ` · ${seconds.toFixed(2)} s in all` + (decode && tokens > 1 ? ` · ${((tokens - 1) / decode).toFixed(1)} tokens/s` : "");
  view.box.dataset.state = "done";
  view.box.dataset.tokens = String(tokens);
}

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  clearErrors(form);
  running?.abort();
  running = new AbortController();
  const models = picks.map((p) => p.value).filter(Boolean);
  const messages = [];
  if (form.elements.system.value.trim()) messages.push({ role: "system", content: form.elements.system.value });
  messages.push({ role: "user", content: form.elements.prompt.value });
  const numberOr = (text) => (text.trim() && !Number.isNaN(Number(text)) ? Number(text) : text);
  const options = { max_tokens: numberOr(form.elements.max_tokens.value), temperature: numberOr(form.elements.temperature.value) };
  const views = models.map(column);
  answers.replaceChildren(...views.map((v) => v.box));
  answers.style.setProperty("--columns", String(views.length));
  await Promise.all(
    models.map((model, i) =>
      ask(model, messages, options, running.signal, views[i]).catch((error) => {
        if (error.name === "AbortError") return;
        views[i].box.dataset.state = "error";
        views[i].stats.textContent = error.message;
        if (error.param) showError(error, form);
      }),
    ),
  );
});

modelOptions()
  .then((options) => {
    const wanted = new URLSearchParams(location.search).get("model");
    picks.forEach((pick, i) => fillSelect(pick, options, { empty: i < 2 ? null : "none" }));
    // the first base model beside the newest fine-tuned one (or the model the link asked for)
    const tuned = options.find((o) => o.value.startsWith("ft:"));
    if (wanted && ![...picks[1].options].some((o) => o.value === wanted)) {
      for (const pick of picks) pick.append(el("option", { value: wanted }, wanted)); // a checkpoint: not listed
    }
    if (wanted) picks[1].value = wanted;
    else if (tuned) picks[1].value = tuned.value;
  })
  .catch((e) => pageError(e.message));
