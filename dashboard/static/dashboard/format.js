// Number and time formatting in the viewer's terms.

const CURRENCIES = new Set(["USD", "EUR", "GBP", "JPY", "CHF", "USDT"]);
const SI = [[1e12, "T"], [1e9, "G"], [1e6, "M"], [1e3, "k"]];

export function formatValue(value, unit = "") {
  if (value === null || value === undefined || Number.isNaN(value)) return "–";
  if (value === 0) return unit ? `0 ${unit}` : "0";
  if (unit === "B" || unit === "B/s") {
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let v = Math.abs(value), i = 0;
    while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
    const suffix = unit === "B/s" ? "/s" : "";
    return `${(Math.sign(value) * v).toFixed(v < 10 ? 2 : 1)} ${units[i]}${suffix}`;
  }
  const abs = Math.abs(value);
  if (CURRENCIES.has(unit) && abs < 1e9) {
    // Prices read best in full: 65,012.34 USD, not 65.01k USD.
    const digits = abs >= 100 ? 2 : abs >= 1 ? 4 : 6;
    return `${value.toLocaleString("en-US", { minimumFractionDigits: Math.min(2, digits), maximumFractionDigits: digits })} ${unit}`;
  }
  if (abs >= 1e4) for (const [n, s] of SI) if (abs >= n) return `${(value / n).toFixed(2)}${s}${unit ? " " + unit : ""}`;
  const digits = abs >= 100 ? 1 : abs >= 1 ? 2 : 4;
  return `${value.toFixed(digits)}${unit ? " " + unit : ""}`;
}

// The viewer's chosen zone ("browser", "UTC" or an IANA name); stored per user server-side later.
export function viewerTimeZone() {
  const zone = document.body.dataset.timezone;
  return zone && zone !== "browser" ? zone : Intl.DateTimeFormat().resolvedOptions().timeZone;
}

export function formatTime(ms, zone = viewerTimeZone()) {
  return new Date(ms).toLocaleTimeString([], { timeZone: zone, hour12: false });
}
