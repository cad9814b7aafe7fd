//! `--plot FILE.svg`: throughput against thread count, one panel per
//! workload, every implementation a line (ours drawn thicker).

use std::path::Path;

use plotters::prelude::*;

use crate::peers::Role;
use crate::report::{Report, WorkloadReport};

const PANEL: (u32, u32) = (680, 420);
const TITLE_HEIGHT: u32 = 40;

/// Distinct colours (matplotlib's tab10), by implementation order.
const COLORS: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];

/// Draws every workload with throughput figures into an SVG at `path`.
pub fn write_svg(report: &Report, path: &Path) -> Result<(), String> {
    let panels: Vec<&WorkloadReport> =
        report.workloads.iter().filter(|w| w.rows.iter().any(|r| r.speed.is_some())).collect();
    let cols = panels.len().clamp(1, 2) as u32;
    let rows = panels.len().div_ceil(2).max(1) as u32;
    let size = (PANEL.0 * cols, PANEL.1 * rows + TITLE_HEIGHT);
    let root = SVGBackend::new(path, size).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let (title, body) = root.split_vertically(TITLE_HEIGHT);
    let m = &report.machine;
    let text = format!(
        "cpulocal bench ({} run): {}, {} CPUs, {} {}, backend {}",
        report.mode, m.cpu_model, m.cpus, m.os, m.arch, m.backend
    );
    title.titled(&text, ("sans-serif", 18)).map_err(|e| e.to_string())?;
    for (area, w) in body.split_evenly((rows as usize, cols as usize)).iter().zip(&panels) {
        panel(area, w).map_err(|e| format!("{}: {e}", w.id))?;
    }
    root.present().map_err(|e| e.to_string())
}

type Area<'a> = DrawingArea<SVGBackend<'a>, plotters::coord::Shift>;

/// Width of the legend at the right of each panel.
const LEGEND_WIDTH: u32 = 240;

fn panel(area: &Area<'_>, w: &WorkloadReport) -> Result<(), Box<dyn std::error::Error>> {
    let measured: Vec<_> =
        w.rows.iter().filter_map(|r| Some((r, r.speed.as_ref()?.mops_total))).collect();
    let mut threads: Vec<usize> = measured.iter().map(|(r, _)| r.threads).collect();
    threads.sort_unstable();
    threads.dedup();
    // Thread counts sit at 0, 1, 2, ... whatever their values.
    let x = |t: usize| threads.iter().position(|&u| u == t).unwrap_or(0) as f64;
    let lo = measured.iter().map(|m| m.1).fold(f64::INFINITY, f64::min).max(1e-6);
    let hi = measured.iter().map(|m| m.1).fold(0.0, f64::max).max(lo * 1.01);
    let n = threads.len() as f64;
    let (plot_area, legend_area) = area.split_horizontally(PANEL.0 - LEGEND_WIDTH);
    let mut chart = ChartBuilder::on(&plot_area)
        .caption(w.id, ("sans-serif", 16))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(64)
        .build_cartesian_2d(-0.5..n - 0.5, (lo / 1.5..hi * 1.5).log_scale().base(2.0))?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .light_line_style(TRANSPARENT)
        .bold_line_style(BLACK.mix(0.08))
        .x_labels(threads.len())
        .y_labels(8)
        .x_desc(w.threads_label)
        .y_desc("Mops/s total (log scale, base 2)")
        .x_label_formatter(&|v| {
            let i = v.round();
            match threads.get(i as usize) {
                Some(t) if (v - i).abs() < 1e-6 && i >= 0.0 => t.to_string(),
                _ => String::new(),
            }
        })
        .y_label_formatter(&|v| crate::report::num(*v))
        .draw()?;
    let mut names: Vec<(&str, Role)> = Vec::new();
    for (r, _) in &measured {
        if !names.iter().any(|(n, _)| *n == r.name) {
            names.push((r.name, r.role));
        }
    }
    for (i, (name, role)) in names.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let width = if *role == Role::Ours { 3 } else { 1 };
        let style = ShapeStyle { color: color.to_rgba(), filled: true, stroke_width: width };
        let points: Vec<(f64, f64)> = measured
            .iter()
            .filter(|(r, _)| r.name == *name)
            .map(|(r, m)| (x(r.threads), *m))
            .collect();
        chart.draw_series(LineSeries::new(points.iter().copied(), style))?;
        chart.draw_series(points.iter().map(|&p| Circle::new(p, 3, style)))?;
        // The legend: a short line and the name, one row each.
        let y = 48 + 20 * i as i32;
        legend_area.draw(&PathElement::new(vec![(4, y), (26, y)], style))?;
        let label = format!("{}{name}", role.prefix());
        legend_area.draw(&Text::new(label, (32, y - 7), ("sans-serif", 12).into_font()))?;
    }
    Ok(())
}
