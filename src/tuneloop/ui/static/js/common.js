// What every page shares: the API key of this tab's session, requests to the public API, errors, formatting.

const KEY = "tuneloop.apiKey";

export function apiKey() {
  return sessionStorage.getItem(KEY);
}

export function setApiKey(key) {
  if (key) sessionStorage.setItem(KEY, key);
  else sessionStorage.removeItem(KEY);
}

/** An error answered by the API in OpenAI's envelope ({error: {message, type, param, code}}). */
export class ApiError extends Error {
  constructor(status, error) {
    super(error.message || `HTTP ${status}`);
    this.status = status;
    this.param = error.param ?? null;
    this.code = error.code ?? null;
  }
}

export function authHeaders(headers = {}) {
  const key = apiKey();
  return key ? { ...headers, Authorization: `Bearer ${key}` } : headers;
}

function signIn() {
  setApiKey(null);
  const next = location.pathname + location.search;
  location.assign(`/ui/login?next=${encodeURIComponent(next)}`);
}

/** A request to /v1 + path: JSON (or FormData) in, the parsed JSON out; ApiError on an error status. */
export async function api(path, { method = "GET", json, form, raw = false, signal } = {}) {
  const init = { method, headers: authHeaders(), signal };
  if (json !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(json);
  } else if (form !== undefined) {
    init.body = form;
  }
  const response = await fetch(`/v1${path}`, init);
  if (response.status === 401 && document.body.dataset.auth === "required") signIn();
  if (!response.ok) throw await errorOf(response);
  if (raw) return response;
  return response.status === 204 ? null : response.json();
}

export async function errorOf(response) {
  let body = null;
  try {
    body = await response.json();
  } catch {
    /* not JSON */
  }
  return new ApiError(response.status, body?.error ?? { message: `HTTP ${response.status} ${response.statusText}` });
}

/** Every item of a paginated list (newest first), following ``after`` cursors; at most ``cap`` items. */
export async function listAll(path, cap = 5000) {
  const items = [];
  let after = null;
  for (;;) {
    const sep = path.includes("?") ? "&" : "?";
    const page = await api(`${path}${sep}limit=1000${after ? `&after=${encodeURIComponent(after)}` : ""}`);
    items.push(...page.data);
    if (!page.has_more || !page.data.length || items.length >= cap) return items;
    after = page.data[page.data.length - 1].id;
  }
}

/** Show ``error`` next to the field named by its ``param`` (data-error-for), else in the page's alert. */
export function showError(error, form = document) {
  clearErrors(form);
  const param = error instanceof ApiError ? error.param : null;
  const slot = param && form.querySelector(`[data-error-for="${CSS.escape(param)}"]`);
  if (slot) {
    slot.textContent = error.message;
    const field = slot.closest(".field")?.querySelector("input, select, textarea");
    field?.setAttribute("aria-invalid", "true");
    field?.focus();
  } else {
    pageError(error.message);
  }
}

export function clearErrors(form = document) {
  for (const slot of form.querySelectorAll("[data-error-for]")) slot.textContent = "";
  for (const field of form.querySelectorAll("[aria-invalid]")) field.removeAttribute("aria-invalid");
  pageError(null);
}

export function pageError(message) {
  const alert = document.getElementById("page-error");
  alert.hidden = !message;
  alert.textContent = message ?? "";
}

/** An element: el("td", {class: "num"}, "42", child, ...). Strings become text nodes (never HTML). */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : value);
  }
  node.append(...children.filter((c) => c !== null && c !== undefined));
  return node;
}

export function fmtTime(seconds) {
  return seconds ? new Date(seconds * 1000).toLocaleString() : "—";
}

export function fmtDuration(seconds) {
  if (seconds === null || seconds === undefined) return "—";
  seconds = Math.round(seconds);
  if (seconds < 60) return `${seconds} s`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min ${seconds % 60} s`;
  return `${Math.floor(seconds / 3600)} h ${Math.floor((seconds % 3600) / 60)} min`;
}

export function fmtNumber(value, digits = 4) {
  if (value === null || value === undefined) return "—";
  return Number.isInteger(value) ? value.toLocaleString() : Number(value).toPrecision(digits);
}

export function statusBadge(status) {
  return el("span", { class: `badge status-${status}` }, status);
}

/** Call ``fn`` now and every ``ms`` while the tab is visible; errors show in the page's alert. */
export function every(ms, fn) {
  let timer = null;
  const tick = async () => {
    try {
      await fn();
      const stamp = document.getElementById("refreshed");
      if (stamp) stamp.textContent = `Updated ${new Date().toLocaleTimeString()}`;
    } catch (error) {
      pageError(error.message);
    }
    timer = setTimeout(tick, document.hidden ? ms * 5 : ms);
  };
  tick();
  return () => clearTimeout(timer);
}

/** Download a file's content through the API (with the key) under its own name. */
export async function download(fileId, filename) {
  const response = await api(`/files/${encodeURIComponent(fileId)}/content`, { raw: true });
  const url = URL.createObjectURL(await response.blob());
  const link = el("a", { href: url, download: filename || fileId });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
}

/** Fill a <select> with options [{value, label}], keeping the current choice when it is still there. */
export function fillSelect(select, options, { empty = null, chosen = null } = {}) {
  const keep = chosen ?? select.value;
  select.replaceChildren(
    ...(empty !== null ? [el("option", { value: "" }, empty)] : []),
    ...options.map((o) => el("option", { value: o.value }, o.label ?? o.value)),
  );
  if ([...select.options].some((o) => o.value === keep)) select.value = keep;
}

/** Model ids for pickers: base models first, then fine-tuned ones, newest first. */
export async function modelOptions() {
  const models = (await api("/models")).data;
  const base = models.filter((m) => !m.id.startsWith("ft:"));
  const tuned = models.filter((m) => m.id.startsWith("ft:")).sort((a, b) => b.created - a.created);
  return [...base, ...tuned].map((m) => ({ value: m.id }));
}

document.getElementById("sign-out")?.addEventListener("click", async () => {
  setApiKey(null);
  await fetch("/ui/logout", { method: "POST" });
  location.assign("/ui/login");
});

// A page opened without the key in this tab (a new tab shares the cookie, not sessionStorage): sign in again.
if (document.body.dataset.auth === "required" && !apiKey() && location.pathname !== "/ui/login") signIn();
