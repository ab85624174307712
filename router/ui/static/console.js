// Sluicegate console: confirmation before destructive actions, and copying a new key.
"use strict";
document.addEventListener("click", (event) => {
  const target = event.target instanceof Element ? event.target.closest("[data-confirm], [data-copy]") : null;
  if (target === null) return;
  if (target.hasAttribute("data-confirm") && !window.confirm(target.getAttribute("data-confirm"))) {
    event.preventDefault();
    return;
  }
  if (target.hasAttribute("data-copy")) {
    const source = document.getElementById(target.getAttribute("data-copy"));
    if (source !== null && navigator.clipboard) {
      navigator.clipboard.writeText(source.textContent.trim()).then(() => { target.textContent = "Copied"; });
    }
  }
});
