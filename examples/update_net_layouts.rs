//! The layout experiment behind `UpdateNet::forward` (docs/BENCHMARKS.md): the paper's
//! update net (Z = hidden = 256) fwd+bwd over a [B, 256, 32, 32] state, as NCHW
//! convolutions, channels-last convolutions, and with the 1x1 convolutions as GEMMs on
//! [B*H*W, C], against libtorch's sgemm of the same shape.
//!
//!     B=8 cargo run --release --example update_net_layouts
use std::time::Instant;
use tch::{nn, nn::Module, Device, Kind, Tensor};
fn time<F: FnMut()>(mut f: F) -> f64 {
    f();
    let mut v = vec![];
    for _ in 0..3 {
        let t = Instant::now();
        f();
        v.push(t.elapsed().as_secs_f64());
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[1]
}
fn main() {
    tch::set_num_threads(2);
    let b: i64 = std::env::var("B").map(|v| v.parse().unwrap()).unwrap_or(8);
    let (z, h) = (256i64, 256i64);
    let vs = nn::VarStore::new(Device::Cpu);
    let p = vs.root();
    let c3 = nn::conv2d(
        &p / "c3",
        z,
        h,
        3,
        nn::ConvConfig {
            padding: 1,
            ..Default::default()
        },
    );
    let blocks: Vec<(nn::Conv2D, nn::Conv2D)> = (0..4)
        .map(|i| {
            (
                nn::conv2d(&p / format!("a{i}"), h, h, 1, Default::default()),
                nn::conv2d(&p / format!("b{i}"), h, h, 1, Default::default()),
            )
        })
        .collect();
    let out = nn::conv2d(&p / "o", h, z, 1, Default::default());
    let flops = 3.0 * 2.0 * (z * h * 9 + 8 * h * h + h * z) as f64 * (b * 1024) as f64;
    let fwd_nchw = |s: &Tensor| {
        let mut x = c3.forward(s);
        for (a, bb) in &blocks {
            x = bb.forward(&a.forward(&x).elu()) + x;
        }
        out.forward(&x)
    };
    // 1x1 as matmul on [N,H,W,C] (channels-last view)
    let lin = |x: &Tensor, c: &nn::Conv2D| {
        let w = c.ws.flatten(1, -1);
        x.matmul(&w.tr()) + c.bs.as_ref().unwrap()
    };
    let fwd_mm = |s: &Tensor| {
        let x = c3.forward(s); // NCHW
        let mut x = x.permute([0, 2, 3, 1]); // NHWC view (non-contig)
        x = x.contiguous();
        for (a, bb) in &blocks {
            x = lin(&lin(&x, a).elu(), bb) + x;
        }
        lin(&x, &out).permute([0, 3, 1, 2])
    };
    let s = Tensor::randn([b, z, 32, 32], (Kind::Float, Device::Cpu)).set_requires_grad(true);
    let t1 = time(|| {
        fwd_nchw(&s).sum(Kind::Float).backward();
    });
    println!(
        "nchw conv        {:.3}s {:.1} GFLOP/s",
        t1,
        flops / t1 / 1e9
    );
    let scl = s
        .detach()
        .permute([0, 2, 3, 1])
        .contiguous()
        .permute([0, 3, 1, 2])
        .set_requires_grad(true);
    let t2 = time(|| {
        fwd_nchw(&scl).sum(Kind::Float).backward();
    });
    println!(
        "channels-last    {:.3}s {:.1} GFLOP/s",
        t2,
        flops / t2 / 1e9
    );
    let t3 = time(|| {
        fwd_mm(&s).sum(Kind::Float).backward();
    });
    println!(
        "1x1 as matmul    {:.3}s {:.1} GFLOP/s",
        t3,
        flops / t3 / 1e9
    );
    let t4 = time(|| {
        fwd_mm(&scl).sum(Kind::Float).backward();
    });
    println!(
        "cl + matmul      {:.3}s {:.1} GFLOP/s",
        t4,
        flops / t4 / 1e9
    );
    let a = Tensor::randn([b * 1024, h], (Kind::Float, Device::Cpu));
    let w = Tensor::randn([h, h], (Kind::Float, Device::Cpu));
    let t5 = time(|| {
        let _ = a.matmul(&w);
    });
    println!(
        "sgemm            {:.4}s {:.1} GFLOP/s",
        t5,
        2.0 * (b * 1024 * h * h) as f64 / t5 / 1e9
    );
}
