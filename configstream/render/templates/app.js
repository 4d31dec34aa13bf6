// Filter and copy for the ConfigStream dashboard. Kept in its own file so
// the page's Content-Security-Policy can forbid inline scripts.
"use strict";
document.getElementById("filter").addEventListener("input", function (event) {
  var needle = event.target.value.trim().toLowerCase();
  document.querySelectorAll("#proxies tbody tr[data-search]").forEach(function (row) {
    var words = row.dataset.search.split(" ");
    row.hidden = needle !== "" && !words.some(function (word) { return word.indexOf(needle) === 0; });
  });
});
document.getElementById("proxies").addEventListener("click", function (event) {
  var link = event.target.dataset && event.target.dataset.link;
  if (!link) return;
  navigator.clipboard.writeText(link).then(function () { event.target.textContent = "Copied"; });
});
