"""Tests for precompute.libraries.paper: the readers of the paper's four datasets (section 4).

Every fixture is written in tmp_path in the dataset's official format, with tiny real images
whose pixel value encodes which image they are, so a decoded image can be traced back to the
annotation it came from.
"""
from __future__ import annotations

import csv
import json
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


from conftest import expect_error
from precompute.libraries import load_splits
from precompute.libraries import paper
from precompute.libraries.paper import cub, deepfashion
from precompute.libraries.paper import (read_cub, read_deepfashion, read_imaterialist,
                                        read_inaturalist, read_paper_library)

SIDE = 32


# --------------------------------------------------------------------------- helpers


def save_image(path: Path, value: int) -> None:
    """A small flat image whose grey level is ``value`` (JPEG or PNG after the suffix)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(path)


def grey_levels(data) -> np.ndarray:
    """Mean grey level of every decoded image of a TaskData, rounded."""
    return np.rint(data.images.float().mean(dim=(1, 2, 3)).numpy()).astype(int)


def image_value(index: int) -> int:
    """The grey level that identifies image ``index`` (distinct after JPEG, 1-based index)."""
    return 10 + 8 * index


def value_index(levels: np.ndarray) -> list[int]:
    return [int(round((v - 10) / 8)) for v in levels]



def labelled_images(spec) -> dict[str, list[tuple[int, str]]]:
    """split -> [(image index from its grey level, label name)] after load_splits."""
    out = {}
    for split, data in load_splits(spec, SIDE).items():
        out[split] = [(i, data.classes[int(lb)])
                      for i, lb in zip(value_index(grey_levels(data)), data.labels)]
    return out


# --------------------------------------------------------------------------- iNaturalist 2018

# id, species, kingdom, phylum, class, order, train images, val images
INAT_SPECIES = [
    (0, "Sciurus carolinensis", "Animalia", "Chordata", "Mammalia", "Rodentia", 2, 1),
    (1, "Tamias striatus", "Animalia", "Chordata", "Mammalia", "Rodentia", 3, 1),
    (2, "Vulpes vulpes", "Animalia", "Chordata", "Mammalia", "Carnivora", 2, 1),  # alone: no task
    (3, "Turdus migratorius", "Animalia", "Chordata", "Aves", "Passeriformes", 2, 1),
    (4, "Cardinalis cardinalis", "Animalia", "Chordata", "Aves", "Passeriformes", 2, 1),
    (5, "Corvus corax", "Animalia", "Chordata", "Aves", "Passeriformes", 0, 1),  # no train images
    (6, "Salvia officinalis", "Plantae", "Tracheophyta", "Magnoliopsida", "Lamiales", 2, 1),
    (7, "Mentha spicata", "Plantae", "Tracheophyta", "Magnoliopsida", "Lamiales", 2, 1),
]


def write_inat(root: Path, categories_file: bool = False) -> Path:
    """train2018.json / val2018.json (+ categories.json) and images; image i has grey level of i."""
    categories = [{"id": c, "name": n, "kingdom": k, "phylum": p, "class": cl, "order": o,
                   "family": "F", "genus": n.split()[0], "supercategory": k}
                  for c, n, k, p, cl, o, _, _ in INAT_SPECIES]
    index = 0
    for json_name, column in (("train2018.json", 6), ("val2018.json", 7)):
        images, annotations = [], []
        for species in INAT_SPECIES:
            for _ in range(species[column]):
                index += 1
                name = f"train_val2018/{species[2]}/{species[0]}/{index:04d}.jpg"
                save_image(root / name, image_value(index))
                images.append({"id": index, "file_name": name, "width": 8, "height": 8})
                annotations.append({"id": index, "image_id": index, "category_id": species[0]})
        doc = {"info": {}, "images": images, "annotations": annotations}
        if not categories_file:
            doc["categories"] = categories
        (root / json_name).write_text(json.dumps(doc, indent=1))
    if categories_file:
        (root / "categories.json").write_text(json.dumps(categories))
    return root


def inat_species_of_image(root: Path) -> dict[int, str]:
    names = {c: n for c, n, *_ in INAT_SPECIES}
    out = {}
    for json_name in ("train2018.json", "val2018.json"):
        for ann in json.loads((root / json_name).read_text())["annotations"]:
            out[ann["image_id"]] = names[ann["category_id"]]
    return out


@pytest.mark.parametrize("categories_file", [False, True])
def test_inaturalist_one_task_per_order_with_two_species(tmp_path, categories_file):
    root = write_inat(tmp_path / "inat2018", categories_file)
    specs = read_inaturalist(root)
    assert [s.task_id for s in specs] == [
        "inat2018/order/Lamiales", "inat2018/order/Passeriformes", "inat2018/order/Rodentia"]
    by_id = {s.task_id: s for s in specs}
    rodentia = by_id["inat2018/order/Rodentia"]
    assert rodentia.family == "inaturalist" and rodentia.name == "Rodentia"
    assert rodentia.taxonomy == ("Animalia", "Chordata", "Mammalia", "Rodentia")
    assert by_id["inat2018/order/Lamiales"].taxonomy == (
        "Plantae", "Tracheophyta", "Magnoliopsida", "Lamiales")
    assert rodentia.meta["num_classes"] == 2
    assert (rodentia.meta["train_images"], rodentia.meta["test_images"]) == (5, 2)
    # Corvus corax has validation images only: it is not a class of Passeriformes.
    passeri = by_id["inat2018/order/Passeriformes"]
    assert (passeri.meta["num_classes"], passeri.meta["train_images"],
            passeri.meta["test_images"]) == (2, 4, 2)
    assert {r.label for r in passeri.records()} == {"Turdus migratorius", "Cardinalis cardinalis"}


def test_inaturalist_load_splits_decodes_images_with_their_species(tmp_path):
    root = write_inat(tmp_path / "inat2018")
    spec = next(s for s in read_inaturalist(root) if s.name == "Rodentia")
    records = spec.records()
    assert all(Path(r.image).is_absolute() and Path(r.image).is_file() for r in records)
    splits = load_splits(spec, SIDE)
    assert splits["train"].classes == ["Sciurus carolinensis", "Tamias striatus"]
    assert splits["train"].size == 5 and splits["test"].size == 2
    assert splits["train"].images.shape == (5, 3, SIDE, SIDE)
    truth = inat_species_of_image(root)
    for split, pairs in labelled_images(spec).items():
        assert all(truth[i] == label for i, label in pairs), (split, pairs)


def test_inaturalist_missing_files_are_named(tmp_path):
    root = write_inat(tmp_path / "inat2018")
    for name in ("val2018.json", "train2018.json"):
        (root / name).unlink()
        expect_error(lambda: read_inaturalist(root), f"missing file {root / name}",
                     "train2018.json", "val2018.json")
    expect_error(lambda: read_inaturalist(tmp_path / "nowhere"),
                 f"root folder not found: {tmp_path / 'nowhere'}")


def test_inaturalist_needs_the_taxonomy(tmp_path):
    root = write_inat(tmp_path / "inat2018")
    doc = json.loads((root / "train2018.json").read_text())
    for cat in doc["categories"]:
        del cat["order"]
    (root / "train2018.json").write_text(json.dumps(doc))
    expect_error(lambda: read_inaturalist(root), "'order'", "categories.json")


def test_inaturalist_bad_json_and_bad_annotation_name_file_and_place(tmp_path):
    root = write_inat(tmp_path / "inat2018")
    good = (root / "val2018.json").read_text()
    (root / "val2018.json").write_text('{\n "images": [\n  {"id": 1,,}\n ]\n}')
    expect_error(lambda: read_inaturalist(root), f"{root / 'val2018.json'} line 3", "not valid JSON")
    doc = json.loads(good)
    doc["annotations"][1]["category_id"] = 99
    (root / "val2018.json").write_text(json.dumps(doc))
    expect_error(lambda: read_inaturalist(root), "annotations entry #1", "val2018.json", "99")


def test_inaturalist_missing_image_is_named_when_records_are_read(tmp_path):
    root = write_inat(tmp_path / "inat2018")
    spec = next(s for s in read_inaturalist(root) if s.name == "Lamiales")
    gone = Path(spec.records()[0].image)
    gone.unlink()
    expect_error(spec.records, str(gone), "not found")


# --------------------------------------------------------------------------- CUB-200-2011

CUB_CLASSES = [row["class_name"] for row in
               csv.DictReader(open(Path(cub.__file__).with_name("cub_taxonomy.csv")))]
# Official class ids (1-based) of the species the small fixture has images of.
CUB_FIXTURE_IDS = [1, 2, 86, 158, 159, 29]  # 2 albatrosses, a loon, 2 warblers, a crow


def write_cub(root: Path, class_ids=CUB_FIXTURE_IDS, per_class=(2, 1), images=True) -> Path:
    """The four CUB index files (all 200 classes listed) and images/ for ``class_ids``."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "classes.txt").write_text(
        "".join(f"{i} {i:03d}.{name}\n" for i, name in enumerate(CUB_CLASSES, start=1)))
    lines = {"images.txt": [], "image_class_labels.txt": [], "train_test_split.txt": []}
    index = 0
    for class_id in class_ids:
        folder = f"{class_id:03d}.{CUB_CLASSES[class_id - 1]}"
        for k in range(sum(per_class)):
            index += 1
            path = f"{folder}/{CUB_CLASSES[class_id - 1]}_{index:04d}.jpg"
            if images:
                save_image(root / "images" / path, image_value(index))
            lines["images.txt"].append(f"{index} {path}")
            lines["image_class_labels.txt"].append(f"{index} {class_id}")
            lines["train_test_split.txt"].append(f"{index} {int(k < per_class[0])}")
    for name, rows in lines.items():
        (root / name).write_text("\n".join(rows) + "\n")
    return root


def test_cub_taxonomy_table_covers_the_200_classes_and_gives_25_tasks():
    table = cub._cub_taxonomy()
    assert len(CUB_CLASSES) == 200 and len(set(CUB_CLASSES)) == 200 and len(table) == 200
    assert table["Black_footed_Albatross"] == ("Procellariiformes", "Diomedeidae")
    assert table["Cape_May_Warbler"] == ("Passeriformes", "Parulidae")
    assert all(table[c] == ("Passeriformes", "Parulidae") for c in CUB_CLASSES if c.endswith("_Warbler"))
    orders = Counter(order for order, _ in table.values())
    families = Counter(f for o, f in table.values() if o == "Passeriformes")
    assert sum(n >= 2 for n in orders.values()) == 12
    assert sum(n >= 2 for n in families.values()) == 13


def test_cub_full_class_list_gives_the_papers_25_tasks(tmp_path):
    root = write_cub(tmp_path / "cub", class_ids=range(1, 201), per_class=(1, 1), images=False)
    specs = read_cub(root)
    assert len(specs) == paper.PAPER_TASK_COUNTS["cub"] == 25
    assert sum(s.meta["level"] == "order" for s in specs) == 12
    by_id = {s.task_id: s for s in specs}
    assert "cub/order/Gaviiformes" not in by_id  # Pacific Loon is its order's only species
    assert by_id["cub/order/Passeriformes"].meta["num_classes"] == 133
    assert by_id["cub/family/Parulidae"].meta["num_classes"] == 30
    assert by_id["cub/order/Charadriiformes"].meta["num_classes"] == 24


@pytest.mark.parametrize("nested", [True, False])
def test_cub_orders_and_passerine_families(tmp_path, nested):
    root = tmp_path / "data"
    write_cub(root / "CUB_200_2011" if nested else root)
    specs = read_cub(root)
    by_id = {s.task_id: s for s in specs}
    assert sorted(by_id) == ["cub/family/Parulidae", "cub/order/Passeriformes",
                             "cub/order/Procellariiformes"]
    aves = ("Animalia", "Chordata", "Aves")
    assert by_id["cub/order/Procellariiformes"].taxonomy == aves + ("Procellariiformes",)
    assert by_id["cub/family/Parulidae"].taxonomy == aves + ("Passeriformes", "Parulidae")
    assert all(s.family == "cub" for s in specs)
    passeri = by_id["cub/order/Passeriformes"]
    assert (passeri.meta["num_classes"], passeri.meta["train_images"],
            passeri.meta["test_images"]) == (3, 6, 3)
    splits = load_splits(by_id["cub/family/Parulidae"], SIDE)
    assert splits["train"].classes == ["Bay_breasted_Warbler", "Black_and_white_Warbler"]
    assert (splits["train"].size, splits["test"].size) == (4, 2)


def test_cub_load_splits_labels_follow_the_index_files(tmp_path):
    root = write_cub(tmp_path / "cub")
    class_of = dict(line.split() for line in (root / "image_class_labels.txt").read_text().splitlines())
    spec = next(s for s in read_cub(root) if s.task_id == "cub/order/Passeriformes")
    pairs = labelled_images(spec)
    assert len(pairs["train"]) == 6 and len(pairs["test"]) == 3
    for split_pairs in pairs.values():
        for index, label in split_pairs:
            assert CUB_CLASSES[int(class_of[str(index)]) - 1] == label


@pytest.mark.parametrize("name", ["images.txt", "image_class_labels.txt", "classes.txt",
                                  "train_test_split.txt"])
def test_cub_missing_file_is_named(tmp_path, name):
    root = write_cub(tmp_path / "cub")
    (root / name).unlink()
    expect_error(lambda: read_cub(root), f"missing file {root / name}", "CUB_200_2011")


def test_cub_malformed_lines_name_file_and_line(tmp_path):
    root = write_cub(tmp_path / "cub")
    rows = (root / "images.txt").read_text().splitlines()
    rows[2] = "3"
    (root / "images.txt").write_text("\n".join(rows) + "\n")
    expect_error(lambda: read_cub(root), f"{root / 'images.txt'} line 3", "<image_id> <path>")
    write_cub(root)
    rows = (root / "train_test_split.txt").read_text().splitlines()
    rows[4] = "5 2"
    (root / "train_test_split.txt").write_text("\n".join(rows) + "\n")
    expect_error(lambda: read_cub(root), f"{root / 'train_test_split.txt'} line 5", "0 or 1")
    write_cub(root)
    rows = (root / "image_class_labels.txt").read_text().splitlines()
    rows[1] = "2 x"
    (root / "image_class_labels.txt").write_text("\n".join(rows) + "\n")
    expect_error(lambda: read_cub(root), "image_class_labels.txt line 2")


def test_cub_unknown_class_name_points_at_the_taxonomy_table(tmp_path):
    root = write_cub(tmp_path / "cub")
    text = (root / "classes.txt").read_text().replace("Laysan_Albatross", "Dodo")
    (root / "classes.txt").write_text(text)
    expect_error(lambda: read_cub(root), "'Dodo'", "cub_taxonomy.csv")


# --------------------------------------------------------------------------- iMaterialist

# imageId -> label ids; image 12 is listed but was never downloaded.
IMAT_TRAIN = {1: ["62", "17"], 2: ["62"], 3: ["62"], 4: ["62"], 5: ["17"], 6: ["17"], 7: ["105"],
              8: ["3"], 9: ["3"], 10: ["3"], 11: ["3"], 12: ["62"]}
IMAT_VALIDATION = {101: ["62"], 102: ["62"], 103: ["17"], 104: ["3"], 105: ["3"], 106: ["999"]}
NOT_DOWNLOADED = {12}


def write_imaterialist(root: Path) -> Path:
    for json_name, folder, table in (("train.json", "train", IMAT_TRAIN),
                                     ("validation.json", "validation", IMAT_VALIDATION)):
        doc = {"images": [{"imageId": str(i), "url": f"https://example.org/{i}.jpg"} for i in table],
               "annotations": [{"imageId": str(i), "labelId": labels} for i, labels in table.items()]}
        (root / json_name).parent.mkdir(parents=True, exist_ok=True)
        (root / json_name).write_text(json.dumps(doc, indent=1))
        (root / folder).mkdir(exist_ok=True)
        for i in table:
            if i not in NOT_DOWNLOADED:
                save_image(root / folder / f"{i}.jpg", image_value(i % 100 + 20 * (i > 100)))
    return root


def read_imat_quietly(root, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return read_imaterialist(root, **kwargs)


def test_imaterialist_one_balanced_binary_task_per_label(tmp_path):
    root = write_imaterialist(tmp_path / "imaterialist")
    with pytest.warns(UserWarning, match="1 of the 12 images of train.json"):
        specs = read_imaterialist(root)
    # 999 appears in validation only: no training positive, no task.
    assert [s.task_id for s in specs] == ["imaterialist/label/3", "imaterialist/label/17",
                                          "imaterialist/label/62", "imaterialist/label/105"]
    spec = {s.task_id: s for s in specs}["imaterialist/label/62"]
    assert spec.family == "imaterialist" and spec.name == "label 62"
    assert spec.taxonomy == ("imaterialist", "label")
    assert spec.meta["positives_train"] == 4  # image 12 is not on disk
    assert spec.meta["not_downloaded"] == {"train": 1, "test": 0}
    records = spec.records()
    counts = Counter((r.split, r.label) for r in records)
    assert counts == {("train", "yes"): 4, ("train", "no"): 4, ("test", "yes"): 2, ("test", "no"): 2}
    assert (spec.meta["train_images"], spec.meta["test_images"]) == (8, 4)
    for r in records:
        image_id = int(Path(r.image).stem)
        labels = (IMAT_TRAIN if r.split == "train" else IMAT_VALIDATION)[image_id]
        assert ("62" in labels) == (r.label == "yes"), r
        assert Path(r.image).parent.name == ("train" if r.split == "train" else "validation")


def test_imaterialist_sample_is_seeded_and_capped(tmp_path):
    root = write_imaterialist(tmp_path / "imaterialist")
    first = {s.task_id: s for s in read_imat_quietly(root)}["imaterialist/label/62"]
    again = {s.task_id: s for s in read_imat_quietly(root)}["imaterialist/label/62"]
    assert first.records() == again.records() == first.records()
    samples = {tuple(r.image for r in {s.task_id: s for s in read_imat_quietly(root, seed=seed)}
                     ["imaterialist/label/62"].records() if r.label == "no") for seed in range(8)}
    assert len(samples) > 1  # the seed matters
    capped = {s.task_id: s for s in read_imat_quietly(root, max_per_class=3)}["imaterialist/label/62"]
    counts = Counter((r.split, r.label) for r in capped.records())
    assert counts == {("train", "yes"): 3, ("train", "no"): 3, ("test", "yes"): 2, ("test", "no"): 2}
    # Label 3 is on 4 of 11 downloaded training images, label 17 on 3: both balanced.
    label3 = {s.task_id: s for s in read_imat_quietly(root)}["imaterialist/label/3"]
    assert Counter(r.label for r in label3.records() if r.split == "train") == {"yes": 4, "no": 4}


def test_imaterialist_load_splits_labels_match_annotations(tmp_path):
    root = write_imaterialist(tmp_path / "imaterialist")
    spec = {s.task_id: s for s in read_imat_quietly(root)}["imaterialist/label/17"]
    pairs = labelled_images(spec)
    assert len(pairs["train"]) == 6 and len(pairs["test"]) == 2
    for index, label in pairs["train"]:
        assert ("17" in IMAT_TRAIN[index]) == (label == "yes")
    for index, label in pairs["test"]:
        assert ("17" in IMAT_VALIDATION[index - 20 + 100]) == (label == "yes")


def test_imaterialist_label_map_names_and_groups_tasks(tmp_path):
    root = write_imaterialist(tmp_path / "imaterialist")
    (root / "labels.csv").write_text(
        "labelId,taskId,labelName,taskName,isPants,isShoe\n"
        "17,2,Black,color,no,no\n62,9,Ripped,style,no,no\n")
    by_id = {s.task_id: s for s in read_imat_quietly(root)}
    assert by_id["imaterialist/label/17"].name == "Black"
    assert by_id["imaterialist/label/17"].taxonomy == ("imaterialist", "color")
    assert by_id["imaterialist/label/62"].taxonomy == ("imaterialist", "style")
    assert by_id["imaterialist/label/3"].taxonomy == ("imaterialist", "label")
    (root / "labels.csv").write_text("labelId,taskId,labelName,taskName\n17,2,Black,color\nx,y\n")
    expect_error(lambda: read_imat_quietly(root), f"{root / 'labels.csv'} line 3")


def test_imaterialist_missing_files_and_bad_json(tmp_path):
    root = write_imaterialist(tmp_path / "imaterialist")
    (root / "validation.json").rename(root / "validation.bak")
    expect_error(lambda: read_imat_quietly(root), f"missing file {root / 'validation.json'}",
                 "<root>/validation/<imageId>.jpg")
    (root / "validation.bak").rename(root / "validation.json")
    (root / "train").rename(root / "train_images")
    expect_error(lambda: read_imat_quietly(root), f"missing folder {root / 'train'}")
    (root / "train_images").rename(root / "train")
    (root / "train.json").write_text('{"images": [\n{"imageId": "1"}\n], "annotations": [}')
    expect_error(lambda: read_imat_quietly(root), f"{root / 'train.json'} line 3", "not valid JSON")
    for seed, cap in ((-1, 5), (0, 0), (0.5, 5)):
        expect_error(lambda: read_imaterialist(root, seed=seed, max_per_class=cap), "must be")


# --------------------------------------------------------------------------- DeepFashion

DF_ATTRIBUTES = [("a-line", 3), ("abstract chevron", 1), ("denim", 2), ("boho", 5)]
DF_PARTITION = ["train"] * 6 + ["val"] * 2 + ["test"] * 4  # images 1..12
# Rows: images 1..12; columns: the attributes above. 0 = unknown.
DF_VALUES = np.array([
    [1, 1, -1, -1],
    [1, -1, -1, 1],
    [0, -1, -1, 1],
    [-1, -1, -1, 1],
    [-1, -1, -1, 1],
    [-1, -1, -1, 1],
    [1, -1, -1, 1],
    [-1, -1, -1, 1],
    [1, -1, -1, -1],
    [-1, -1, 1, 1],
    [-1, 1, -1, -1],
    [-1, -1, -1, -1],
])


def df_name(index: int) -> str:
    return f"img/Sheer_Pleated-Front_Blouse/img_{index:08d}.jpg"


def write_deepfashion(root: Path, anno: str = "Anno", images_in: str = "",
                      values: np.ndarray = DF_VALUES, newline: str = "\n") -> Path:
    """Official-format annotation lists (padded columns as in the release) and images."""
    (root / anno).mkdir(parents=True, exist_ok=True)
    (root / "Eval").mkdir(exist_ok=True)
    cloth = [str(len(DF_ATTRIBUTES)), "attribute_name  attribute_type"]
    cloth += [f"{name:<29}{kind}" for name, kind in DF_ATTRIBUTES]
    (root / anno / "list_attr_cloth.txt").write_text("\n".join(cloth) + "\n")
    img = [str(len(values)), "image_name  attribute_labels"]
    img += [f"{df_name(i):<60}" + " ".join(f"{v:>2}" for v in row)
            for i, row in enumerate(values, start=1)]
    (root / anno / "list_attr_img.txt").write_bytes((newline.join(img) + newline).encode())
    part = [str(len(values)), "image_name  evaluation_status"]
    part += [f"{df_name(i):<60}{s}" for i, s in enumerate(DF_PARTITION[:len(values)], start=1)]
    (root / "Eval" / "list_eval_partition.txt").write_text("\n".join(part) + "\n")
    for i in range(1, len(values) + 1):
        save_image(root / images_in / df_name(i), image_value(i))
    return root


def test_deepfashion_one_task_per_attribute_with_a_training_positive(tmp_path):
    root = write_deepfashion(tmp_path / "deepfashion")
    specs = read_deepfashion(root)
    # "denim" is positive only on a test image: no task.
    assert [s.task_id for s in specs] == ["deepfashion/shape/a-line",
                                          "deepfashion/texture/abstract_chevron",
                                          "deepfashion/style/boho"]
    by_id = {s.task_id: s for s in specs}
    chevron = by_id["deepfashion/texture/abstract_chevron"]
    assert chevron.name == "abstract chevron" and chevron.family == "deepfashion"
    assert chevron.taxonomy == ("deepfashion", "texture")
    assert by_id["deepfashion/style/boho"].taxonomy == ("deepfashion", "style")
    aline = by_id["deepfashion/shape/a-line"]
    assert (aline.meta["positives_train"], aline.meta["positives_test"]) == (3, 1)
    assert (aline.meta["train_images"], aline.meta["test_images"]) == (6, 2)
    counts = Counter((r.split, r.label) for r in aline.records())
    assert counts == {("train", "yes"): 3, ("train", "no"): 3, ("test", "yes"): 1, ("test", "no"): 1}
    # boho: 7 training positives but a single training negative -> 1 + 1.
    boho = Counter((r.split, r.label) for r in by_id["deepfashion/style/boho"].records())
    assert boho[("train", "yes")] == boho[("train", "no")] == 1


def test_deepfashion_labels_follow_values_and_unknowns_are_unused(tmp_path):
    root = write_deepfashion(tmp_path / "deepfashion")
    for j, spec in enumerate(read_deepfashion(root)):
        column = [name for name, _ in DF_ATTRIBUTES].index(spec.name)
        pairs = labelled_images(spec)
        for split, split_pairs in pairs.items():
            for index, label in split_pairs:
                assert DF_VALUES[index - 1, column] == (1 if label == "yes" else -1)
                in_test = DF_PARTITION[index - 1] == "test"
                assert in_test == (split == "test")  # val counts as train
    aline = read_deepfashion(root)[0].records()
    assert df_name(3) not in {Path(r.image).relative_to(root).as_posix() for r in aline}


def test_deepfashion_seed_gives_the_same_records(tmp_path):
    root = write_deepfashion(tmp_path / "deepfashion")
    a = read_deepfashion(root, seed=3)[0]
    b = read_deepfashion(root, seed=3)[0]
    assert a.records() == b.records() == a.records()
    samples = {tuple(r.image for r in read_deepfashion(root, seed=s)[1].records() if r.label == "no")
               for s in range(8)}
    assert len(samples) > 1
    capped = read_deepfashion(root, max_per_class=2)[0]
    assert Counter((r.split, r.label) for r in capped.records())[("train", "yes")] == 2


@pytest.mark.parametrize("anno,images_in,newline", [("Anno_coarse", "Img", "\n"),
                                                     ("Anno", "", "\r\n")])
def test_deepfashion_layout_variants(tmp_path, anno, images_in, newline):
    values = np.where(DF_VALUES == 0, -1, DF_VALUES)  # the {1, -1} variant of the file
    root = write_deepfashion(tmp_path / "df", anno=anno, images_in=images_in, values=values,
                             newline=newline)
    specs = read_deepfashion(root)
    assert len(specs) == 3
    splits = load_splits(specs[0], SIDE)
    assert (splits["train"].size, splits["test"].size) == (6, 2)
    assert splits["train"].classes == ["no", "yes"]


@pytest.mark.parametrize("relative", ["Anno/list_attr_cloth.txt", "Anno/list_attr_img.txt",
                                      "Eval/list_eval_partition.txt"])
def test_deepfashion_missing_file_is_named(tmp_path, relative):
    root = write_deepfashion(tmp_path / "deepfashion")
    (root / relative).unlink()
    expect_error(lambda: read_deepfashion(root), f"missing file {root / relative}", "Anno_coarse")


def replace_line(path: Path, line_no: int, text: str) -> None:
    lines = path.read_text().splitlines()
    lines[line_no - 1] = text
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("line_no,text,phrase", [
    (5, df_name(3) + "  1 -1 1", "expected 4 attribute values"),
    (7, df_name(5) + "  1 -1 2 1", "must be 1, -1 or 0"),
    (8, df_name(6) + "  1 -1 11 1", "must be 1, -1 or 0"),
    (9, df_name(7) + "  1 - 1 1 1", "must be 1, -1 or 0"),
    (14, df_name(12), "without its 4 attribute values"),
])
def test_deepfashion_malformed_value_line_names_file_and_line(tmp_path, line_no, text, phrase):
    root = write_deepfashion(tmp_path / "deepfashion")
    path = root / "Anno" / "list_attr_img.txt"
    replace_line(path, line_no, text)
    expect_error(lambda: read_deepfashion(root), f"{path} line {line_no}", phrase)


def test_deepfashion_other_malformed_files(tmp_path):
    root = write_deepfashion(tmp_path / "deepfashion")
    cloth = root / "Anno" / "list_attr_cloth.txt"
    replace_line(cloth, 4, "abstract chevron   7")
    expect_error(lambda: read_deepfashion(root), f"{cloth} line 4", "<type 1-5>")
    write_deepfashion(root)
    partition = root / "Eval" / "list_eval_partition.txt"
    replace_line(partition, 6, df_name(4) + "  training")
    expect_error(lambda: read_deepfashion(root), f"{partition} line 6", "train|val|test")
    write_deepfashion(root)
    replace_line(partition, 6, "img/other/img_1.jpg train")
    expect_error(lambda: read_deepfashion(root), df_name(4), "has no line in", str(partition))
    write_deepfashion(root)
    replace_line(root / "Anno" / "list_attr_img.txt", 1, "13")
    expect_error(lambda: read_deepfashion(root), "line 1 declares 13 images", "lists 12")


def test_deepfashion_images_in_neither_place(tmp_path):
    root = write_deepfashion(tmp_path / "deepfashion", images_in="elsewhere")
    spec = read_deepfashion(root)[0]  # listing the tasks needs no image
    expect_error(spec.records, str(root / df_name(1)), str(root / "Img" / df_name(1)))


def test_deepfashion_value_parser_matches_a_plain_parse():
    rng = np.random.default_rng(0)
    values = rng.choice([-1, 0, 1], size=(50, 7), p=[0.6, 0.1, 0.3])
    text = "".join(" ".join(f"{v:>2}" for v in row) + "\n" for row in values).encode()
    pos, neg = deepfashion._parse_value_block(text, 7, Path("x.txt"), list(range(3, 53)))
    np.testing.assert_array_equal(pos, values == 1)
    np.testing.assert_array_equal(neg, values == -1)


# --------------------------------------------------------------------------- the whole library


def write_library(root: Path) -> Path:
    write_inat(root / "inat2018")
    write_cub(root / "CUB_200_2011")
    write_imaterialist(root / "imaterialist")
    write_deepfashion(root / "deepfashion")
    return root


def test_paper_library_reads_all_four_sources(tmp_path):
    root = write_library(tmp_path / "library")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        specs = read_paper_library(root)
        assert Counter(s.family for s in specs) == {"inaturalist": 3, "cub": 3, "imaterialist": 4,
                                                    "deepfashion": 3}
        assert len({s.task_id for s in specs}) == len(specs)
        only = read_paper_library(root, sources=("cub", "deepfashion"))
    assert {s.family for s in only} == {"cub", "deepfashion"}
    # Both bird sources meet at Aves.
    aves = {s.family for s in specs if s.taxonomy[:3] == ("Animalia", "Chordata", "Aves")}
    assert aves == {"inaturalist", "cub"}


def test_paper_library_missing_source_folder_and_bad_sources(tmp_path):
    root = write_library(tmp_path / "library")
    (root / "imaterialist").rename(root / "imat_later")
    expect_error(lambda: read_paper_library(root), f"missing folder {root / 'imaterialist'}")
    assert {s.family for s in read_paper_library(root, sources=["inaturalist"])} == {"inaturalist"}
    expect_error(lambda: read_paper_library(root, sources=["imagenet"]), "'imagenet'", "cub")
    (root / "CUB_200_2011").rename(root / "cub")
    assert len(read_paper_library(root, sources=["cub"])) == 3


# --------------------------------------------------------------------------- the CLI's seed


def test_the_cli_seed_reaches_the_paper_reader(tmp_path, monkeypatch):
    """``build paper --seed S`` samples with S; ``experts`` / ``matrix`` re-read the library with
    the seed the file was built with, whatever their own ``--seed``."""
    from precompute import __main__ as cli
    from precompute import store
    from precompute.errors import Task2VecError

    seen = []

    def reader(root, *, seed=0, **kwargs):
        seen.append(seed)
        raise Task2VecError("stop here")

    monkeypatch.setattr(paper, "read_paper_library", reader)
    db = tmp_path / "lib.duckdb"
    assert cli.main(["build", "paper", "--root", str(tmp_path), "--db", str(db), "--seed", "3"]) == 2
    con = store.connect(db, 4)
    store.set_info(con, library="paper", seed=5, methods=["montecarlo"], filters=4)
    con.execute("INSERT INTO embeddings VALUES ('t', 'montecarlo', [1, 1, 1, 1], 0, 4, 0, '{}')")
    con.close()
    assert cli.main(["experts", "paper", "--root", str(tmp_path), "--db", str(db),
                     "--seed", "9"]) == 2
    assert seen == [3, 5]
