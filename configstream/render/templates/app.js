// Search, filters, sorting and copy buttons of the ConfigStream dashboard.
// Kept in its own file so the page's Content-Security-Policy can forbid
// inline scripts. Rows are only shown, hidden and reordered: no HTML is ever
// built from the data, which strangers wrote.
"use strict";

(function () {
  var table = document.getElementById("proxies");
  var body = table.tBodies[0];
  var rows = Array.prototype.slice.call(body.querySelectorAll("tr[data-search]"));
  var controls = {
    text: document.getElementById("filter"),
    protocol: document.getElementById("protocol"),
    country: document.getElementById("country"),
    latency: document.getElementById("latency")
  };
  var shown = document.getElementById("shown");

  function matches(row, needle, protocol, country, maxLatency) {
    if (protocol && row.dataset.protocol !== protocol) return false;
    if (country && row.dataset.country !== country) return false;
    if (maxLatency !== null) {
      var latency = row.dataset.latency === "" ? Infinity : Number(row.dataset.latency);
      if (latency > maxLatency) return false;
    }
    if (!needle) return true;
    return row.dataset.search.indexOf(needle) !== -1;
  }

  function applyFilters() {
    var needle = controls.text.value.trim().toLowerCase();
    var limit = controls.latency.value.trim();
    var maxLatency = limit === "" || isNaN(Number(limit)) ? null : Number(limit);
    var count = 0;
    rows.forEach(function (row) {
      var keep = matches(row, needle, controls.protocol.value, controls.country.value, maxLatency);
      row.hidden = !keep;
      if (keep) count += 1;
    });
    shown.textContent = count === rows.length ? rows.length + " proxies" : count + " of " + rows.length + " proxies shown";
  }

  function sortKey(row, key) {
    if (key === "latency") return row.dataset.latency === "" ? Infinity : Number(row.dataset.latency);
    return row.dataset[key] || "";
  }

  function sortBy(header) {
    var key = header.dataset.key;
    var ascending = header.getAttribute("aria-sort") !== "ascending";
    table.querySelectorAll("th[data-key]").forEach(function (other) {
      other.removeAttribute("aria-sort");
    });
    header.setAttribute("aria-sort", ascending ? "ascending" : "descending");
    rows.sort(function (a, b) {
      var x = sortKey(a, key), y = sortKey(b, key);
      var order = x < y ? -1 : x > y ? 1 : 0;
      return ascending ? order : -order;
    });
    rows.forEach(function (row) { body.appendChild(row); });
  }

  function copy(text, button) {
    var done = function () {
      button.textContent = "Copied";
      setTimeout(function () { button.textContent = button.dataset.file ? "Copy URL" : "Copy"; }, 1500);
    };
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(text).then(done, function () { button.textContent = "Copy failed"; });
      return;
    }
    // file:// and plain http pages have no clipboard API: select a hidden field.
    var field = document.createElement("textarea");
    field.value = text;
    field.setAttribute("readonly", "");
    field.style.position = "fixed";
    field.style.opacity = "0";
    document.body.appendChild(field);
    field.select();
    try { document.execCommand("copy"); done(); } catch (error) { button.textContent = "Copy failed"; }
    document.body.removeChild(field);
  }

  function showAge() {
    var stamp = document.getElementById("generated");
    var generated = new Date(stamp.getAttribute("datetime"));
    if (isNaN(generated.getTime())) return;
    var minutes = Math.max(0, Math.round((Date.now() - generated.getTime()) / 60000));
    var age = document.getElementById("age");
    age.textContent = minutes < 60 ? "(" + minutes + " min ago)" :
      minutes < 2880 ? "(" + Math.round(minutes / 60) + " h ago)" : "(" + Math.round(minutes / 1440) + " days ago)";
    // Lists older than half a day missed at least two scheduled runs.
    if (minutes > 720) age.className = "stale";
  }

  Object.keys(controls).forEach(function (name) {
    controls[name].addEventListener("input", applyFilters);
  });
  table.querySelectorAll("th[data-key] button").forEach(function (button) {
    button.addEventListener("click", function () { sortBy(button.parentElement); });
  });
  document.addEventListener("click", function (event) {
    var button = event.target;
    if (!button.classList || !button.classList.contains("copy")) return;
    if (button.dataset.link) copy(button.dataset.link, button);
    else if (button.dataset.file) copy(new URL(button.dataset.file, window.location.href).href, button);
  });
  applyFilters();
  showAge();
})();
