//! CelebA in its standard layout: `ROOT/img_align_celeba/*.jpg` (the aligned and cropped
//! 178x218 faces) and `ROOT/list_eval_partition.txt` (`000001.jpg 0` per line; 0/1/2 =
//! train/valid/test, 162,770 / 19,867 / 19,962 images). Images are resized to
//! `size x size` by squashing the whole 178x218 picture without cropping, as the
//! reference's `transforms.Resize((64, 64))` did, with the Triangle filter (an area
//! average when shrinking; see folder.rs).
//!
//! CelebA cannot be redistributed: users download it from the authors' page
//! (https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html, "Align&Cropped Images" and
//! "Eval/list_eval_partition.txt") and unzip it under one directory.
use super::folder::{
    flatten_on_white, one_line, open_image, par_fill, pixels, shrink, ImageFolder,
};
use super::DataError;
use std::path::Path;

/// The split names of `list_eval_partition.txt`'s 0/1/2.
pub const SPLITS: [&str; 3] = ["train", "valid", "test"];

/// Parse the partition file: (file name, split index) per line.
pub fn read_partition(path: &Path) -> Result<Vec<(String, u8)>, DataError> {
    let text = std::fs::read_to_string(path).map_err(|e| DataError::io(path, e))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let mut parts = line.split_whitespace();
        let (Some(name), Some(idx), None) = (parts.next(), parts.next(), parts.next()) else {
            return Err(DataError::line(
                path,
                i + 1,
                format!("expected `NAME SPLIT`, got `{}`", one_line(line)),
            ));
        };
        let split = match idx {
            "0" => 0,
            "1" => 1,
            "2" => 2,
            _ => {
                return Err(DataError::line(
                    path,
                    i + 1,
                    format!("split `{}` is not 0, 1 or 2", one_line(idx)),
                ))
            }
        };
        if name.contains('/') || name.contains("..") || name.contains(char::is_control) {
            return Err(DataError::line(
                path,
                i + 1,
                format!("`{}` is not a plain file name", one_line(name)),
            ));
        }
        out.push((name.to_string(), split));
    }
    if out.is_empty() {
        return Err(DataError::invalid(path, "no images listed"));
    }
    Ok(out)
}

/// The images of one split ("train", "valid" or "test"), the first `limit` of them
/// when given, as RGB `size x size`.
pub fn read_split(
    root: &Path,
    split: &str,
    size: u32,
    limit: Option<usize>,
) -> Result<ImageFolder, DataError> {
    let index = SPLITS.iter().position(|s| *s == split).ok_or_else(|| {
        DataError::invalid(
            root,
            format!("unknown CelebA split `{split}` (train, valid, test)"),
        )
    })? as u8;
    let listed = read_partition(&root.join("list_eval_partition.txt"))?;
    let mut names: Vec<String> = listed
        .into_iter()
        .filter(|(_, s)| *s == index)
        .map(|(n, _)| n)
        .collect();
    if let Some(l) = limit {
        names.truncate(l);
    }
    let dir = root.join("img_align_celeba");
    let files: Vec<_> = names.iter().map(|n| dir.join(n)).collect();
    let per = pixels(size, 3)
        .ok_or_else(|| DataError::invalid(root, format!("{size}x{size} images are too large")))?;
    let mut images = vec![0u8; files.len() * per];
    par_fill(&files, &mut images, per, |path, out| {
        out.copy_from_slice(&shrink(&flatten_on_white(&open_image(path)?), size));
        Ok(())
    })?;
    Ok(ImageFolder {
        names,
        images,
        size,
        channels: 3,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A miniature CelebA: 5 JPEGs of 178x218 and a partition file.
    fn fixture(dir: &Path) {
        std::fs::create_dir_all(dir.join("img_align_celeba")).unwrap();
        let mut part = String::new();
        for i in 0..5u8 {
            let img = image::RgbImage::from_fn(178, 218, |x, _| {
                image::Rgb([i * 50, (x % 256) as u8, 30])
            });
            let name = format!("{:06}.jpg", i + 1);
            img.save(dir.join("img_align_celeba").join(&name)).unwrap();
            part += &format!("{name} {}\n", [0, 0, 1, 2, 2][i as usize]);
        }
        std::fs::write(dir.join("list_eval_partition.txt"), part).unwrap();
    }

    #[test]
    fn reads_each_split_squashed_to_size() {
        let d = tempfile::tempdir().unwrap();
        fixture(d.path());
        let train = read_split(d.path(), "train", 32, None).unwrap();
        assert_eq!(train.names, ["000001.jpg", "000002.jpg"]);
        assert_eq!(train.images.len(), 2 * 32 * 32 * 3);
        assert_eq!(
            (read_split(d.path(), "valid", 32, None).unwrap().names.len()),
            1
        );
        let test = read_split(d.path(), "test", 16, Some(1)).unwrap();
        assert_eq!(test.names, ["000004.jpg"]);
        // Image 4 has red = 150 everywhere (JPEG rounding aside).
        let r = test.images[0];
        assert!((145..=155).contains(&r), "{r}");
    }

    #[test]
    fn errors_name_the_file_and_line() {
        let d = tempfile::tempdir().unwrap();
        fixture(d.path());
        let p = d.path().join("list_eval_partition.txt");
        std::fs::write(&p, "000001.jpg 0\n000002.jpg 7\n").unwrap();
        let e = read_split(d.path(), "train", 32, None)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("list_eval_partition.txt") && e.contains("line 2"),
            "{e}"
        );
        std::fs::write(&p, "000009.jpg 0\n").unwrap();
        let e = read_split(d.path(), "train", 32, None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("000009.jpg"), "{e}");
        let e = read_split(d.path(), "nope", 32, None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown CelebA split"), "{e}");
    }
}
