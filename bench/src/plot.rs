//! The comparison bench's plot: median Gbit/s per tunnel, one bar per congestion control and
//! stream count, from the JSON `bench/tunnels/compare.sh` writes.

use std::path::PathBuf;

use plotters::prelude::*;
use plotters::style::{FontStyle, register_font};
use serde_json::Value;

/// `iketcp-bench plot RESULTS.json OUT.png`
#[derive(clap::Args, Debug)]
pub struct Args {
    /// `results.json` of `bench/tunnels/compare.sh`.
    results: PathBuf,
    /// The PNG to write.
    out: PathBuf,
    /// A TrueType font for the labels.
    #[arg(
        long,
        default_value = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"
    )]
    font: PathBuf,
}

/// One bar: tunnel, series (cc and streams), median Gbit/s.
type Bar = (String, String, f64);

fn bars(v: &Value) -> Vec<Bar> {
    v["results"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| {
            Some((
                r["tunnel"].as_str()?.to_owned(),
                format!(
                    "{}, {} stream(s)",
                    r["cc"].as_str()?,
                    r["streams"].as_u64()?
                ),
                r["median_gbps"].as_f64()?,
            ))
        })
        .collect()
}

fn distinct(it: impl Iterator<Item = String>) -> Vec<String> {
    let mut v: Vec<String> = Vec::new();
    for s in it {
        if !v.contains(&s) {
            v.push(s);
        }
    }
    v
}

pub fn run(a: &Args) -> Result<(), String> {
    let text = std::fs::read_to_string(&a.results).map_err(|e| format!("{:?}: {e}", a.results))?;
    let v: Value = serde_json::from_str(&text).map_err(|e| format!("{:?}: {e}", a.results))?;
    let font = std::fs::read(&a.font).map_err(|e| format!("font {:?}: {e}", a.font))?;
    // The font registry keeps the bytes for the process's life.
    let font: &'static [u8] = Box::leak(font.into_boxed_slice());
    register_font("sans-serif", FontStyle::Normal, font).map_err(|_| "bad font".to_owned())?;
    let bars = bars(&v);
    if bars.is_empty() {
        return Err("no results to plot".into());
    }
    let tunnels = distinct(bars.iter().map(|b| b.0.clone()));
    let series = distinct(bars.iter().map(|b| b.1.clone()));
    let top = bars.iter().map(|b| b.2).fold(0.0f64, f64::max) * 1.15;
    let title = format!(
        "iperf3 through each tunnel, median Gbit/s ({}, {} cores, {})",
        v["cpu"].as_str().unwrap_or("?"),
        v["cores"].as_u64().unwrap_or(0),
        v["date"].as_str().unwrap_or("?")
    );
    let root = BitMapBackend::new(&a.out, (1400, 700)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let n = tunnels.len() as f64;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(20)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..n, 0.0..top.max(0.1))
        .map_err(|e| e.to_string())?;
    let names = tunnels.clone();
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(tunnels.len() * 2 + 1)
        .x_label_formatter(&|x| {
            let i = x.floor() as usize;
            if (x - x.floor() - 0.5).abs() < 0.01 {
                names.get(i).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        .y_desc("Gbit/s")
        .label_style(("sans-serif", 15))
        .draw()
        .map_err(|e| e.to_string())?;
    let width = 0.8 / series.len() as f64;
    for (si, s) in series.iter().enumerate() {
        let color = Palette99::pick(si).to_rgba();
        // Where each of this series' bars starts, and its height.
        let placed: Vec<(f64, f64)> = bars
            .iter()
            .filter(|b| &b.1 == s)
            .filter_map(|b| {
                let ti = tunnels.iter().position(|t| t == &b.0)? as f64;
                Some((ti + 0.1 + width * si as f64, b.2))
            })
            .collect();
        let rects = placed
            .iter()
            .map(|&(x0, h)| Rectangle::new([(x0, 0.0), (x0 + width * 0.9, h)], color.filled()));
        chart
            .draw_series(rects)
            .map_err(|e| e.to_string())?
            .label(s.clone())
            .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 14, y + 6)], color.filled()));
        let labels = placed.iter().map(|&(x0, h)| {
            Text::new(
                format!("{h:.2}"),
                (x0, h + top * 0.01),
                ("sans-serif", 11).into_font(),
            )
        });
        chart.draw_series(labels).map_err(|e| e.to_string())?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .label_font(("sans-serif", 15))
        .draw()
        .map_err(|e| e.to_string())?;
    root.present().map_err(|e| e.to_string())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const RESULTS: &str = r#"{"cpu": "test cpu", "cores": 2, "date": "2026-12-02", "results": [
        {"tunnel": "veth", "cc": "cubic", "streams": 1, "median_gbps": 60.0},
        {"tunnel": "iketcp-kernel", "cc": "cubic", "streams": 1, "median_gbps": 7.9},
        {"tunnel": "iketcp-kernel", "cc": "bbr", "streams": 1, "median_gbps": 5.6},
        {"tunnel": "boringtun", "cc": "cubic", "error": "did not come up"}]}"#;

    #[test]
    fn bars_skip_runs_without_a_figure() {
        let v: Value = serde_json::from_str(RESULTS).unwrap_or_default();
        let b = bars(&v);
        assert_eq!(b.len(), 3);
        assert_eq!(
            b[2],
            ("iketcp-kernel".into(), "bbr, 1 stream(s)".into(), 5.6)
        );
        assert_eq!(
            distinct(b.iter().map(|x| x.0.clone())),
            ["veth", "iketcp-kernel"]
        );
    }

    #[test]
    fn draws_a_png() {
        let font = PathBuf::from("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf");
        if !font.exists() {
            println!("SKIP: no DejaVu font at {font:?} (Debian's fonts-dejavu-core)");
            return;
        }
        let dir = std::env::temp_dir().join(format!("iketcp-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap_or_default();
        let results = dir.join("results.json");
        let out = dir.join("plot.png");
        std::fs::write(&results, RESULTS).unwrap_or_default();
        let r = run(&Args {
            results,
            out: out.clone(),
            font,
        });
        assert_eq!(r, Ok(()));
        let png = std::fs::read(&out).unwrap_or_default();
        assert!(png.starts_with(b"\x89PNG"), "a PNG file");
        let _ = std::fs::remove_dir_all(&dir);
        // No results: a clear error, no file.
        let empty = dir.join("none.json");
        assert!(
            run(&Args {
                results: empty,
                out: dir.join("x.png"),
                font: PathBuf::new()
            })
            .is_err()
        );
    }
}
