// The live parts of a run page: the log grows and the upper part (state, timeline, checks)
// is replaced by the daemon's re-rendering (already escaped there) until the run ends.
// Without JavaScript the page still shows everything as it was when loaded.
"use strict";
(function () {
  var log = document.getElementById("log");
  var live = document.getElementById("live");
  if (!log || !live || !window.EventSource) return;
  var url = log.getAttribute("data-events");
  if (!url) return;
  var es = new EventSource(url);
  es.addEventListener("log", function (e) {
    var atEnd = window.innerHeight + window.scrollY >= document.body.scrollHeight - 40;
    // Text, never markup.
    log.appendChild(document.createTextNode(JSON.parse(e.data)));
    if (atEnd) window.scrollTo(0, document.body.scrollHeight);
  });
  es.addEventListener("live", function (e) {
    live.innerHTML = JSON.parse(e.data).html;
  });
  es.addEventListener("done", function () {
    es.close();
    log.removeAttribute("data-events");
    document.body.setAttribute("data-finished", "1");
  });
})();
