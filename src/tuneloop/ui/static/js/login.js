// Sign in: check the key with the server (header only, never a URL), keep it in this tab's session.
import { errorOf, setApiKey, showError } from "./common.js";

const form = document.getElementById("login-form");
form.addEventListener("submit", async (event) => {
  event.preventDefault();
  const key = form.elements.api_key.value.trim();
  const response = await fetch("/ui/login", { method: "POST", headers: { Authorization: `Bearer ${key}` } });
  if (!response.ok) {
    const error = await errorOf(response);
    error.param = "api_key";
    showError(error, form);
    return;
  }
  setApiKey(key);
  location.assign(form.dataset.next || "/ui/jobs");
});
form.elements.api_key.focus();
