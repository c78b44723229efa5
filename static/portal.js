// The portal's own script: what htmx's in-place updates need for keyboards and screen readers.
// No inline scripts anywhere (the CSP allows only script files from this origin).
(function () {
  "use strict";
  var lastSaid = "";

  function within(root, selector) {
    if (!root || !root.querySelector) return null;
    return root.matches(selector) ? root : root.querySelector(selector);
  }

  // What a screen reader should hear: the live region already on the page gets the text.
  function announce(text) {
    var live = document.getElementById("live-region");
    text = (text || "").replace(/\s+/g, " ").trim();
    if (!live || !text || text === lastSaid) return;
    lastSaid = text;
    live.textContent = "";
    window.setTimeout(function () { live.textContent = text; }, 50);  // a change, not a set value
  }

  document.addEventListener("htmx:afterSettle", function (event) {
    var detail = event.detail || {};
    var target = detail.target;
    // An outerHTML swap replaced the target: its new self has the same id.
    var root = target && target.id ? document.getElementById(target.id) || target : target;
    var said = within(root, "[data-announce]");
    if (said) announce(said.textContent);
    // Focus follows a person's own action (a click, a submit) to what changed: the element
    // marked data-focus (a confirmation's first button, a card's heading). A poll that
    // refreshes a card leaves focus where the person is.
    var config = detail.requestConfig;
    if (!config || !config.triggeringEvent) return;
    var focus = within(root, "[data-focus]");
    if (!focus) return;
    if (!/^(A|BUTTON|INPUT|SELECT|TEXTAREA)$/.test(focus.tagName) && !focus.hasAttribute("tabindex")) {
      focus.setAttribute("tabindex", "-1");
    }
    focus.focus();
  });
})();
