// Offline support for the embedded ipywidgets (loaded after require.js, before the
// @jupyter-widgets/html-manager 1.0.6 bundle, on pages that embed widgets only).
(function () {
  "use strict";
  // 1. The manager loads its fonts relative to the AMD module path of
  //    "@jupyter-widgets/html-manager/dist"; point that at this site's copy.
  var here = document.currentScript.src.replace(/[^/]*$/, "");
  window.require.config({
    paths: { "@jupyter-widgets/html-manager/dist": here + "vendor/html-manager" },
  });
  // 2. The manager typesets widget labels with the MathJax 2 API (MathJax.Hub.Queue);
  //    the book loads MathJax 3, which replaces window.MathJax when it starts. Give
  //    whichever object is current a Hub that forwards to MathJax 3's typesetPromise.
  function queue(job) {
    var el = job && job[2];
    var mj = window.MathJax;
    if (!el || !mj || !mj.startup || !mj.startup.promise) return; // startup typesets the page
    mj.startup.promise.then(function () { return mj.typesetPromise([el]); })
      .catch(function (err) { console.warn("MathJax typeset of a widget label failed:", err); });
  }
  function withHub(mj) {
    if (mj && typeof mj === "object" && !mj.Hub) mj.Hub = { Queue: queue };
    return mj;
  }
  var current = withHub(window.MathJax);
  Object.defineProperty(window, "MathJax", {
    configurable: true,
    get: function () { return current; },
    set: function (value) { current = withHub(value); },
  });
})();
