// Live refresh without a front-end build: re-fetch the page's live part every few seconds.
(function () {
  "use strict";
  function busy(el) {
    var a = document.activeElement;
    return a && a !== document.body && el.contains(a) && a.tagName !== "A" && a.tagName !== "BUTTON";
  }
  document.querySelectorAll("[data-refresh]").forEach(function (el) {
    var every = parseInt(el.getAttribute("data-refresh"), 10) * 1000;
    setInterval(function () {
      if (document.hidden || busy(el)) return;
      var url = new URL(window.location.href);
      url.searchParams.set("partial", "1");
      url.searchParams.delete("msg");
      url.searchParams.delete("err");
      fetch(url, { credentials: "same-origin" }).then(function (r) {
        if (r.status === 401 || r.redirected) { window.location.reload(); return null; }
        return r.ok ? r.text() : null;
      }).then(function (html) {
        if (html !== null && html !== undefined) el.innerHTML = html;
      }).catch(function () { /* offline for a moment: try again next time */ });
    }, every);
  });
  document.addEventListener("submit", function (ev) {
    var msg = ev.target.getAttribute("data-confirm");
    if (msg && !window.confirm(msg)) ev.preventDefault();
  });
})();
