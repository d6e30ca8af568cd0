use plumb::*;
use plumb::ops::elementwise as ew;
use std::time::Instant;
fn main() {
    let gpu = Gpu::new().unwrap();
    for n in [64usize, 1024, 16384] {
        let x = Tensor::from_f32(&gpu, &vec![1.0; n], &[n]).unwrap();
        let x3 = Tensor::from_f32(&gpu, &vec![1.0; n - 1], &[n - 1]).unwrap();
        for (name, t) in [("texture (n%4==0)", &x), ("buffer (n%4!=0)", &x3)] {
            let run = || {
                let mut y = t.clone();
                for _ in 0..200 { y = ew::axpby(&y, t, 1.0, 1.0).unwrap(); }
                y.to_f32_vec().unwrap();
            };
            run();
            let t0 = Instant::now();
            run();
            println!("n {n} {name}: {:.1} us per axpby", t0.elapsed().as_secs_f64() * 1e6 / 200.0);
        }
    }
}
