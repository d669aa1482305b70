// xterm.js writes its layout and colours into <style> elements it creates, and some colours into
// style attributes; the dashboard's Content-Security-Policy (style-src 'self', no
// 'unsafe-inline') refuses both. Here a <style> element that a script creates is backed by a
// constructed style sheet instead, and a style attribute set by a script goes through the
// element's CSSOM style (both allowed by the policy), so the terminal is drawn right and the
// policy stays strict. Only the terminal page loads this.
const create = Document.prototype.createElement;
document.createElement = function createElement(tag, ...rest) {
  if (String(tag).toLowerCase() !== 'style') return create.call(this, tag, ...rest);
  const el = create.call(this, 'template'); // inert where it is put; the sheet holds the rules
  const sheet = new CSSStyleSheet();
  document.adoptedStyleSheets = [...document.adoptedStyleSheets, sheet];
  let text = '';
  Object.defineProperty(el, 'textContent', {
    get() { return text; },
    set(v) { text = String(v); sheet.replaceSync(text); },
  });
  const remove = el.remove.bind(el);
  el.remove = () => {
    document.adoptedStyleSheets = document.adoptedStyleSheets.filter((s) => s !== sheet);
    remove();
  };
  return el;
};

const setAttribute = Element.prototype.setAttribute;
Element.prototype.setAttribute = function setStyleToo(name, value) {
  if (String(name).toLowerCase() === 'style' && this.style) {
    this.style.cssText = String(value);
    return;
  }
  setAttribute.call(this, name, value);
};
