//! The KPI report as one self-contained HTML page: inline CSS and inline SVG, nothing fetched
//! (no script, font or image from anywhere), so it can be mailed, archived and opened offline.
//! Tiles with the change from the month before, a line chart per KPI, the flow matrix as a heat
//! map, the cohort triangle, and every figure in a table (with `data-` attributes that tests and
//! scrapers can read).

use super::{Cohorts, KPIS, Kpi, MonthKpis, Report, rate, shown};
use rust_decimal::Decimal;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;

/// Escapes text for HTML content and attribute values.
pub fn escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

const STYLE: &str = "body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:24px;color:#1d2733;background:#fff}\
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 10px;border-bottom:1px solid #d8dee6;padding-bottom:4px}\
.sub{color:#5b6775;font-size:13px;margin-bottom:16px}\
.tiles{display:grid;grid-template-columns:repeat(4,1fr);gap:10px}\
.tile{border:1px solid #d8dee6;border-radius:8px;padding:10px 12px;background:#f7f9fb}\
.tile .l{font-size:12px;color:#5b6775}.tile .v{font-size:22px;font-weight:600;margin:2px 0}\
.up{color:#1a7f37}.down{color:#b42318}.flat{color:#5b6775}.d{font-size:12px}\
.charts{display:grid;grid-template-columns:repeat(4,1fr);gap:10px}\
.chart{border:1px solid #d8dee6;border-radius:8px;padding:6px}.chart .l{font-size:12px;color:#5b6775;margin:2px 4px}\
table{border-collapse:collapse;font-size:12px}td,th{border:1px solid #d8dee6;padding:3px 6px;text-align:right}\
th{background:#f0f3f6}td.k,th.k{text-align:left}";

/// The page: the report, and the cohort table when given.
pub fn page(report: &Report, cohorts: Option<&Cohorts>) -> String {
    let mut s = String::new();
    let who = if report.partner.is_empty() {
        "the coalition".to_string()
    } else {
        format!("partner {}", report.partner)
    };
    let _ = write!(
        s,
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>Programme KPIs {from} to {to}</title><style>{STYLE}</style></head><body>\
         <h1>Programme KPIs of {who}</h1><div class=\"sub\">{from} to {to} · business days in {tz} · \
         amounts in {cur} · member counts include only members who agreed to analytics · generated {gen}</div>",
        from = escape(&report.from_month),
        to = escape(&report.to_month),
        who = escape(&who),
        tz = escape(&report.time_zone),
        cur = escape(&report.currency),
        gen = escape(&report.generated_at),
    );
    tiles(&mut s, &report.months);
    s.push_str("<h2>Month by month</h2><div class=\"charts\">");
    for k in KPIS {
        line_chart(&mut s, k, &report.months);
    }
    s.push_str("</div>");
    s.push_str("<h2>Where members earn and where they spend</h2>");
    heat_map(&mut s, report);
    if !report.tiers.is_empty() {
        s.push_str("<h2>Members by tier now</h2><table id=\"tiers\"><tr><th class=\"k\">tier</th><th>members</th></tr>");
        for t in &report.tiers {
            let name = if t.tier.is_empty() { "(none)" } else { &t.tier };
            let _ = write!(
                s,
                "<tr><td class=\"k\">{}</td><td data-tier=\"{}\">{}</td></tr>",
                escape(name),
                escape(&t.tier),
                t.members
            );
        }
        s.push_str("</table>");
    }
    if let Some(c) = cohorts {
        s.push_str("<h2>Cohorts: share of members still active, by month of first earn</h2>");
        cohort_triangle(&mut s, c);
    }
    s.push_str("<h2>Figures</h2><table id=\"figures\"><tr><th class=\"k\">KPI</th>");
    for m in &report.months {
        let _ = write!(s, "<th>{}</th>", escape(&m.month));
    }
    s.push_str("</tr>");
    for k in KPIS {
        let _ = write!(s, "<tr><td class=\"k\">{}</td>", escape(k.label));
        for m in &report.months {
            let _ = write!(
                s,
                "<td data-month=\"{}\" data-kpi=\"{}\" data-value=\"{}\">{}</td>",
                escape(&m.month),
                k.key,
                escape(&(k.text)(m)),
                escape(&shown(k, m))
            );
        }
        s.push_str("</tr>");
    }
    s.push_str("</table></body></html>\n");
    s
}

fn tiles(s: &mut String, months: &[MonthKpis]) {
    let Some(last) = months.last() else {
        return;
    };
    let before = months.len().checked_sub(2).and_then(|i| months.get(i));
    let _ = write!(
        s,
        "<h2>{} compared with the month before</h2><div class=\"tiles\">",
        escape(&last.month)
    );
    for k in KPIS {
        let change = match (before.and_then(|b| (k.value)(b)), (k.value)(last)) {
            (Some(b), Some(v)) => {
                let d = v - b;
                let (class, arrow) = if d > 0.0 {
                    ("up", "▲")
                } else if d < 0.0 {
                    ("down", "▼")
                } else {
                    ("flat", "■")
                };
                let text = if k.is_rate {
                    format!("{:+.1} pts", d * 100.0)
                } else {
                    format!("{d:+}")
                };
                format!("<div class=\"d {class}\">{arrow} {}</div>", escape(&text))
            }
            (_, None) => "<div class=\"d flat\">no figure this month</div>".to_string(),
            (None, Some(_)) => "<div class=\"d flat\">no figure the month before</div>".to_string(),
        };
        let _ = write!(
            s,
            "<div class=\"tile\" data-tile=\"{}\"><div class=\"l\">{}</div><div class=\"v\">{}</div>{change}</div>",
            k.key,
            escape(k.label),
            escape(&shown(k, last))
        );
    }
    s.push_str("</div>");
}

/// A small line chart of one KPI over the months (undefined months leave a gap).
fn line_chart(s: &mut String, k: &Kpi, months: &[MonthKpis]) {
    const W: f64 = 260.0;
    const H: f64 = 120.0;
    const PAD: f64 = 22.0;
    let values: Vec<Option<f64>> = months.iter().map(|m| (k.value)(m)).collect();
    let known: Vec<f64> = values.iter().flatten().copied().collect();
    let max = known.iter().copied().fold(0.0_f64, f64::max);
    let min = known.iter().copied().fold(0.0_f64, f64::min);
    let span = if max - min > 0.0 { max - min } else { 1.0 };
    let n = months.len().max(1);
    let x = |i: usize| {
        if n == 1 {
            W / 2.0
        } else {
            PAD + (W - 2.0 * PAD) * i as f64 / (n - 1) as f64
        }
    };
    let y = |v: f64| H - PAD - (H - 2.0 * PAD) * (v - min) / span;
    let _ = write!(
        s,
        "<div class=\"chart\" data-chart=\"{}\"><div class=\"l\">{}</div>\
         <svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" viewBox=\"0 0 {W} {H}\" role=\"img\">\
         <line x1=\"{PAD}\" y1=\"{b}\" x2=\"{r}\" y2=\"{b}\" stroke=\"#c3ccd6\"/>",
        k.key,
        escape(k.label),
        b = H - PAD,
        r = W - PAD,
    );
    // Segments of consecutive defined months.
    let mut run: Vec<String> = Vec::new();
    let flush = |s: &mut String, run: &mut Vec<String>| {
        if run.len() > 1 {
            let _ = write!(
                s,
                "<polyline fill=\"none\" stroke=\"#2f6fdf\" stroke-width=\"2\" points=\"{}\"/>",
                run.join(" ")
            );
        }
        run.clear();
    };
    for (i, v) in values.iter().enumerate() {
        match v {
            Some(v) => {
                run.push(format!("{:.1},{:.1}", x(i), y(*v)));
                let _ = write!(
                    s,
                    "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"2.5\" fill=\"#2f6fdf\"/>",
                    x(i),
                    y(*v)
                );
            }
            None => flush(s, &mut run),
        }
    }
    flush(s, &mut run);
    let fmt = |v: f64| {
        if k.is_rate {
            format!("{:.0}%", v * 100.0)
        } else {
            format!("{v}")
        }
    };
    let _ = write!(
        s,
        "<text x=\"2\" y=\"{:.1}\" font-size=\"9\" fill=\"#5b6775\">{}</text>\
         <text x=\"2\" y=\"{:.1}\" font-size=\"9\" fill=\"#5b6775\">{}</text>",
        PAD - 8.0,
        escape(&fmt(max)),
        H - PAD + 4.0 - 10.0,
        escape(&fmt(min)),
    );
    if let (Some(first), Some(last)) = (months.first(), months.last()) {
        let _ = write!(
            s,
            "<text x=\"{PAD}\" y=\"{:.1}\" font-size=\"9\" fill=\"#5b6775\">{}</text>\
             <text x=\"{:.1}\" y=\"{:.1}\" font-size=\"9\" fill=\"#5b6775\" text-anchor=\"end\">{}</text>",
            H - 6.0,
            escape(&first.month),
            W - PAD,
            H - 6.0,
            escape(&last.month),
        );
    }
    s.push_str("</svg></div>");
}

/// Blue whose depth says the share of the largest value.
fn shade(share: f64) -> String {
    let t = share.clamp(0.0, 1.0);
    let c = |lo: f64, hi: f64| (lo + (hi - lo) * t).round() as u8;
    format!(
        "#{:02x}{:02x}{:02x}",
        c(240.0, 31.0),
        c(244.0, 90.0),
        c(250.0, 200.0)
    )
}

fn heat_map(s: &mut String, report: &Report) {
    let issuers: BTreeSet<&str> = report.flows.iter().map(|f| f.issuer.as_str()).collect();
    let redeemers: BTreeSet<&str> = report.flows.iter().map(|f| f.redeemer.as_str()).collect();
    let cells: BTreeMap<(&str, &str), (i64, Decimal)> = report
        .flows
        .iter()
        .map(|f| {
            (
                (f.issuer.as_str(), f.redeemer.as_str()),
                (f.points, f.amount),
            )
        })
        .collect();
    let max = report
        .flows
        .iter()
        .map(|f| f.points)
        .max()
        .unwrap_or(0)
        .max(1) as f64;
    const CW: f64 = 96.0;
    const CH: f64 = 34.0;
    const LW: f64 = 110.0;
    const TH: f64 = 24.0;
    let w = LW + CW * redeemers.len().max(1) as f64 + 4.0;
    let h = TH + CH * issuers.len().max(1) as f64 + 18.0;
    let _ = write!(
        s,
        "<div data-chart=\"flows\"><svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" role=\"img\">"
    );
    if report.flows.is_empty() {
        s.push_str("<text x=\"4\" y=\"20\" font-size=\"12\" fill=\"#5b6775\">no points redeemed in these months</text>");
    }
    for (j, r) in redeemers.iter().enumerate() {
        let _ = write!(
            s,
            "<text x=\"{:.1}\" y=\"16\" font-size=\"11\" text-anchor=\"middle\">at {}</text>",
            LW + CW * j as f64 + CW / 2.0,
            escape(r)
        );
    }
    for (i, is) in issuers.iter().enumerate() {
        let top = TH + CH * i as f64;
        let _ = write!(
            s,
            "<text x=\"4\" y=\"{:.1}\" font-size=\"11\">from {}</text>",
            top + CH / 2.0 + 4.0,
            escape(is)
        );
        for (j, r) in redeemers.iter().enumerate() {
            let (p, a) = cells.get(&(*is, *r)).copied().unwrap_or_default();
            let left = LW + CW * j as f64;
            let share = p as f64 / max;
            let ink = if share > 0.55 { "#ffffff" } else { "#1d2733" };
            let _ = write!(
                s,
                "<rect x=\"{left:.1}\" y=\"{top:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{}\" stroke=\"#ffffff\"/>\
                 <text x=\"{:.1}\" y=\"{:.1}\" font-size=\"11\" text-anchor=\"middle\" fill=\"{ink}\" data-flow=\"{}→{}\">{p}</text>\
                 <text x=\"{:.1}\" y=\"{:.1}\" font-size=\"9\" text-anchor=\"middle\" fill=\"{ink}\">{}</text>",
                CW - 2.0,
                CH - 2.0,
                shade(share),
                left + CW / 2.0,
                top + 14.0,
                escape(is),
                escape(r),
                left + CW / 2.0,
                top + 26.0,
                escape(&format!("{} {}", a.round_dp(2), report.currency)),
            );
        }
    }
    s.push_str("</svg></div>");
}

fn cohort_triangle(s: &mut String, c: &Cohorts) {
    let width = c.cohorts.iter().map(|c| c.active.len()).max().unwrap_or(0);
    const CW: f64 = 44.0;
    const CH: f64 = 22.0;
    const LW: f64 = 130.0;
    let w = LW + CW * width.max(1) as f64 + 4.0;
    let h = CH * (c.cohorts.len() + 1) as f64 + 4.0;
    let _ = write!(
        s,
        "<div data-chart=\"cohorts\"><svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" role=\"img\">\
         <text x=\"4\" y=\"15\" font-size=\"11\">cohort (members)</text>"
    );
    for k in 0..width {
        let _ = write!(
            s,
            "<text x=\"{:.1}\" y=\"15\" font-size=\"11\" text-anchor=\"middle\">+{k}</text>",
            LW + CW * k as f64 + CW / 2.0
        );
    }
    if c.cohorts.is_empty() {
        s.push_str("<text x=\"4\" y=\"38\" font-size=\"12\" fill=\"#5b6775\">no first earns in these months</text>");
    }
    for (i, row) in c.cohorts.iter().enumerate() {
        let top = CH * (i + 1) as f64;
        let _ = write!(
            s,
            "<text x=\"4\" y=\"{:.1}\" font-size=\"11\">{} ({})</text>",
            top + 15.0,
            escape(&row.month),
            row.members
        );
        for (k, n) in row.active.iter().enumerate() {
            let share = rate(*n, row.members).unwrap_or_default();
            let f: f64 = share.to_string().parse().unwrap_or(0.0);
            let ink = if f > 0.55 { "#ffffff" } else { "#1d2733" };
            let left = LW + CW * k as f64;
            let _ = write!(
                s,
                "<rect x=\"{left:.1}\" y=\"{top:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{}\" stroke=\"#ffffff\"/>\
                 <text x=\"{:.1}\" y=\"{:.1}\" font-size=\"10\" text-anchor=\"middle\" fill=\"{ink}\" data-cohort=\"{}+{k}\" data-active=\"{n}\">{}%</text>",
                CW - 2.0,
                CH - 2.0,
                shade(f),
                left + CW / 2.0,
                top + 15.0,
                escape(&row.month),
                (share * Decimal::from(100)).round_dp(0),
            );
        }
    }
    s.push_str("</svg></div>");
}
