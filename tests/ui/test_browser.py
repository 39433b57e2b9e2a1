"""The app in headless Chromium: upload, attack, read the verdict, look at the plots; screenshots kept."""
import pytest

from hpm import interactive as demo

from .conftest import ARTIFACTS

UNTRAINED = f"{255 * demo.UNTRAINED_EPS:g}"  # the radius, x 1/255, a model not adversarially trained starts at

pytestmark = pytest.mark.ui


def upload(page, path):
    page.locator("input[type=file]").first.set_input_files(str(path))


def load_shipped(page, name):
    page.get_by_label("Shipped checkpoint").click()
    page.get_by_role("option", name=name, exact=True).click()
    page.get_by_role("button", name="Load model").click()


def pick_first_gallery_sample(page):
    """Make the gallery's first test sample the current image (a data root's or a shipped one)."""
    thumbs = page.locator("#gallery .thumbnail-item")
    thumbs.first.wait_for(timeout=30_000)
    thumbs.first.click()
    page.locator("#current-image img").wait_for(timeout=30_000)


def test_upload_and_attack_shows_both_heads_and_a_verdict(page, tmp_path):
    from PIL import Image
    path = tmp_path / "red.png"
    Image.new("RGB", (64, 48), (210, 40, 40)).save(path)
    upload(page, path)
    page.locator("#current-image img").wait_for(timeout=30_000)
    assert page.get_by_text("Current image: 64×48 px, shown 4× enlarged (nearest neighbour: one square per pixel)",
                            exact=True).is_visible()
    page.get_by_role("button", name="Run attack").click()
    summary = page.locator("#attack-summary")
    summary.get_by_text("deployed HPM fooled").wait_for(timeout=120_000)
    text = summary.inner_text()
    assert f"ε = {UNTRAINED}/255" in text and "Surrogate (the model the attack followed) fooled" in text
    assert "transferred to HPM" in text
    for label in ("FC, clean", "HPM, clean", "FC, adversarial", "HPM, adversarial"):
        assert page.get_by_text(label, exact=True).first.is_visible()
    page.locator(".js-plotly-plot").first.wait_for(timeout=30_000)
    page.screenshot(path=str(ARTIFACTS / "attack.png"), full_page=True)


def test_controls_and_panels_follow_the_loaded_head(page):
    """An FC-head checkpoint has no batch dependence and no second head: no context controls, one pair of panels."""
    page.get_by_text("Classify inside a context batch").wait_for(timeout=30_000)
    load_shipped(page, "cifar10-resnet20w32-fgsmrs-fc")
    page.get_by_text("Classify inside a context batch").wait_for(state="hidden", timeout=60_000)
    assert not page.get_by_text("Context size N (test images)").is_visible()
    assert sum(label.is_visible() for label in page.get_by_text("FC, clean", exact=True).all()) == 1
    page.screenshot(path=str(ARTIFACTS / "fc-head.png"), full_page=True)


def test_gallery_sample_classified_alone_and_in_context(page):
    gallery = page.locator("#gallery")
    thumbs = page.locator("#gallery .thumbnail-item")
    thumbs.first.wait_for(timeout=30_000)  # filled on page load
    thumbs.first.click()
    page.locator("#current-image img").wait_for(timeout=30_000)
    page.get_by_role("button", name="Classify").click()
    page.locator("#attack-summary").get_by_text("inside a batch with the first 64").wait_for(timeout=60_000)
    page.get_by_label("Classify inside a context batch").uncheck()
    page.get_by_role("button", name="Classify").click()
    page.locator("#attack-summary").get_by_text("alone (batch of 1)").wait_for(timeout=60_000)
    assert gallery.is_visible()
    page.screenshot(path=str(ARTIFACTS / "gallery-classify.png"), full_page=True)


def _text(path):
    path.write_text("this is text, not a PNG")


def _bomb(size):
    def write(path):
        from PIL import Image
        Image.new("1", size).save(path)  # a few kB that decode to hundreds of MB
    return write


BAD_UPLOADS = {"text": (_text, "not an image file that can be read"),
               "bomb": (_bomb((13_000, 13_000)), "outside the accepted range"),
               "pil-bomb": (_bomb((20_000, 10_000)), "refused as a decompression bomb")}


@pytest.mark.parametrize("name", sorted(BAD_UPLOADS))
def test_bad_upload_shows_a_message_and_the_app_keeps_working(page, tmp_path, name):
    write, message = BAD_UPLOADS[name]
    path = tmp_path / "upload.png"
    write(path)
    upload(page, path)
    page.get_by_text(message).first.wait_for(timeout=30_000)
    page.wait_for_timeout(800)  # the toast fades in
    page.screenshot(path=str(ARTIFACTS / f"bad-upload-{name}.png"))  # viewport: the error toast is fixed-position
    assert page.get_by_role("button", name="Run attack").is_enabled()


def test_sensitivity_tab_draws_the_isotropic_cdfs(page):
    page.get_by_role("tab", name="Sensitivity").click()
    plot = page.locator(".js-plotly-plot").first
    plot.wait_for(timeout=30_000)
    page.get_by_text("Isotropic features: P(S_c >= sup S_d) (Eq. 11)").wait_for(timeout=30_000)
    assert page.locator(".js-plotly-plot .scatterlayer .trace").count() == 6
    page.screenshot(path=str(ARTIFACTS / "sensitivity.png"), full_page=True)
    page.get_by_role("tab", name="About").click()
    page.get_by_text("Sensitivity as a Double-Edged Sword.").wait_for(timeout=30_000)
    page.screenshot(path=str(ARTIFACTS / "about.png"), full_page=True)


def test_without_a_data_root_the_shipped_samples_fill_the_gallery_the_context_batch_and_fig3(
        browser, app_without_data):
    url, cache = app_without_data
    page = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
    page.goto(url)
    thumbs = page.locator("#gallery .thumbnail-item")
    thumbs.first.wait_for(timeout=60_000)
    assert thumbs.count() == 24 and not page.get_by_text("This server has no").is_visible()
    assert page.get_by_label("Classify inside a context batch").is_checked()  # on by default for HPM
    thumbs.first.click()
    page.locator("#current-image img").wait_for(timeout=30_000)
    page.get_by_role("button", name="Classify").click()
    page.locator("#attack-summary").get_by_text("inside a batch with the first 64 cifar10 test images").wait_for(
        timeout=60_000)
    page.screenshot(path=str(ARTIFACTS / "no-data-gallery.png"), full_page=True)
    page.get_by_role("tab", name="Sensitivity").click()
    page.get_by_role("button", name="Measure the loaded model's angle statistics (Fig. 3)").click()
    page.get_by_text("modelled vs empirical (max gap").wait_for(timeout=180_000)
    assert page.get_by_text("Angle statistics (300 samples").is_visible()  # every shipped test image
    page.wait_for_timeout(500)
    page.screenshot(path=str(ARTIFACTS / "no-data-fig3.png"), full_page=True)
    page.context.close()
    assert not (cache / "torchvision").exists()  # nothing was downloaded


def test_without_a_data_root_an_imagenet_model_gets_the_shipped_imagenet_samples(browser, app_without_data):
    url, _ = app_without_data
    page = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
    page.goto(url)
    page.get_by_label("…or a Hub repo id").fill("someone/tiny-imagenet")  # in the app's Hub cache
    page.get_by_role("button", name="Load model").click()
    page.get_by_text("Knows the 1000 imagenet classes").wait_for(timeout=60_000)
    thumbs = page.locator("#gallery .thumbnail-item")
    page.wait_for_function("document.querySelectorAll('#gallery .thumbnail-item').length === 10", timeout=60_000)
    thumbs.first.click()
    page.locator("#current-image img").wait_for(timeout=30_000)
    page.get_by_role("button", name="Classify").click()
    page.locator("#attack-summary").get_by_text("alone (batch of 1)").wait_for(timeout=60_000)
    page.screenshot(path=str(ARTIFACTS / "no-data-imagenet.png"), full_page=True)
    page.context.close()


def test_the_first_paint_sets_epsilon_to_the_default_models_radius_as_loading_it_does(page):
    import sys
    webapp = sys.modules["hpm.webapp"]
    default = webapp.DEFAULT_MODEL.removeprefix("checkpoints/")
    reloaded = webapp.load_model(default, "")[3]  # the value a reload of the default model sets
    assert float(page.get_by_label("ε (×1/255, ℓ∞)").first.input_value()) == reloaded
    assert reloaded == float(UNTRAINED)  # the default model is not adversarially trained, as its card says


def test_an_imagenet_model_from_the_hub_field_gets_its_own_gallery_and_radius(page, imagenet_hub_id):
    page.get_by_label("…or a Hub repo id").fill(imagenet_hub_id)
    page.get_by_role("button", name="Load model").click()
    page.get_by_text("Knows the 1000 imagenet classes").wait_for(timeout=60_000)
    assert page.get_by_label("ε (×1/255, ℓ∞)").first.input_value() == UNTRAINED  # not adversarially trained
    thumbs = page.locator("#gallery .thumbnail-item")
    if thumbs.count() == 0 and page.get_by_text("This server has no imagenet test images").is_visible():
        pytest.skip("no local ImageNet samples: gallery hidden (message shown)")
    thumbs.first.wait_for(timeout=60_000)
    thumbs.first.click()
    page.locator("#current-image img").wait_for(timeout=30_000)
    page.get_by_role("button", name="Run attack").click()
    page.locator("#attack-summary").get_by_text(f"ε = {UNTRAINED}/255").wait_for(timeout=120_000)
    page.locator(".js-plotly-plot").first.wait_for(timeout=30_000)
    page.screenshot(path=str(ARTIFACTS / "imagenet.png"), full_page=True)


def test_fig3_is_measured_once_per_model_and_drawn_again_from_the_kept_statistics(page):
    import sys
    webapp = sys.modules["hpm.webapp"]
    webapp._ANGLE_REPORTS.clear()  # measured afresh, as on a first visit
    page.get_by_role("tab", name="Sensitivity").click()
    button = page.get_by_role("button", name="Measure the loaded model's angle statistics (Fig. 3)")
    button.click()
    page.get_by_text("modelled vs empirical (max gap").wait_for(timeout=180_000)
    page.wait_for_timeout(500)
    page.screenshot(path=str(ARTIFACTS / "fig3.png"), full_page=True)
    measured, = webapp._ANGLE_REPORTS.values()
    button.click()
    page.wait_for_timeout(2000)
    assert list(webapp._ANGLE_REPORTS.values()) == [measured]  # the same statistics object: not measured again


def test_on_a_phone_the_page_fits_the_screen_and_an_attack_runs(browser, app_url, tmp_path):
    from PIL import Image
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    page = context.new_page()
    page.goto(app_url)
    page.get_by_text("Hybrid Prototype Mixing — attack FC vs HPM live").wait_for(timeout=30_000)
    path = tmp_path / "blue.png"
    Image.new("RGB", (32, 32), (20, 60, 220)).save(path)
    upload(page, path)
    page.locator("#current-image img").wait_for(timeout=30_000)
    page.get_by_role("button", name="Run attack").click()
    page.locator("#attack-summary").get_by_text("fooled").first.wait_for(timeout=120_000)
    page.locator(".js-plotly-plot").first.wait_for(timeout=30_000)
    assert page.evaluate("document.documentElement.scrollWidth") <= 390  # nothing sticks out sideways
    page.screenshot(path=str(ARTIFACTS / "phone.png"), full_page=True)
    context.close()


def test_a_mixed_classifier_names_its_panels_and_attacks_a_branch(page):
    """A mixed checkpoint: its robust branch and the mixture side by side; an attack on its standard branch."""
    load_shipped(page, "cifar10-resnet20w32-fgsmrs-20ep-mixed-alpha0.8")
    page.get_by_text("robust branch, clean", exact=True).first.wait_for(timeout=60_000)
    assert page.get_by_text("mixture (α = 0.8), adversarial", exact=True).first.is_visible()
    assert page.get_by_text("standard = the standard branch alone (transfer to the mixture)").first.is_visible()
    pick_first_gallery_sample(page)
    page.get_by_label("standard").check()
    page.get_by_role("button", name="Run attack").click()
    page.locator("#attack-summary").get_by_text("deployed mixture (α = 0.8) fooled").wait_for(timeout=120_000)
    page.screenshot(path=str(ARTIFACTS / "mixed.png"), full_page=True)


def test_an_adaptive_mixture_shows_the_alpha_its_mixing_network_gives_the_image_before_and_after_the_attack(page):
    load_shipped(page, "cifar10-resnet20w32-fgsmrs-20ep-mixed-adaptive")
    page.get_by_text("mixture (adaptive α in [0.2, 0.95]), clean", exact=True).first.wait_for(timeout=60_000)
    assert page.get_by_text("lowest-alpha = the mixture at its lowest alpha").first.is_visible()
    pick_first_gallery_sample(page)
    page.get_by_role("button", name="Run attack").click()
    page.locator("#attack-summary").get_by_text("weight on the robust branch, α(x): clean").wait_for(timeout=120_000)
    page.screenshot(path=str(ARTIFACTS / "adaptive.png"), full_page=True)


def test_the_shipped_mixednuts_shows_its_robust_branch_beside_the_mixture_and_which_branch_decided(page):
    load_shipped(page, "cifar10-preactresnet18-fgsmrs-15ep-mixednuts")
    page.get_by_text("robust branch, clean", exact=True).first.wait_for(timeout=60_000)
    assert page.get_by_text("adaptive = MixedNUTS' adaptive attack").first.is_visible()
    pick_first_gallery_sample(page)
    page.get_by_role("button", name="Run attack").click()
    page.locator("#attack-summary").get_by_text("On the adversarial image: The mixture predicts").wait_for(
        timeout=120_000)
    page.get_by_text("perturbation magnitude").first.wait_for(timeout=60_000)  # the heatmap drawn, then the picture
    page.screenshot(path=str(ARTIFACTS / "mixednuts.png"), full_page=True)
